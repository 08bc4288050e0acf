"""Read the authors' stage-one checkpoints (LFAE/train.py layout) into lfdm's `LFAE`.

A reference checkpoint is a torch pickle `{'example', 'epoch', 'generator', 'bg_predictor',
'region_predictor', 'optimizer'}` whose three module entries are state dicts; its architecture is
in the YAML the run was started with (config/mug128.yaml etc.). Only plain tensors and containers
are read (`torch.load(weights_only=True)`); the optimizer state is ignored.

lfdm names its modules differently (e.g. `generator.pixelwise_flow_predictor.mask` is
`generator.flow_predictor.mask_head`); `reference_to_project_key` is the one place that maps them.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lfdm_cli.config.schema import from_dict, load_yaml
from lfdm_cli.errors import UserError
from lfdm_cli.lfae.config import LFAEModelConfig
from lfdm_cli.lfae.model import LFAE

PARTS = ("generator", "region_predictor", "bg_predictor")

# (reference key prefix pattern, project replacement) per top-level part; first match wins.
_KEY_RULES: dict[str, list[tuple[str, str]]] = {
    "region_predictor": [
        (r"down\.weight$", "downsample.kernel"),
        (r"predictor\.encoder\.down_blocks\.", "hourglass.encoder.blocks."),
        (r"predictor\.decoder\.up_blocks\.", "hourglass.decoder.blocks."),
        (r"regions\.", "region_head."),
        (r"jacobian\.", "jacobian_head."),
    ],
    "bg_predictor": [
        (r"encoder\.down_blocks\.", "encoder.blocks."),
        (r"fc\.", "head."),
    ],
    "generator": [
        (r"pixelwise_flow_predictor\.down\.weight$", "flow_predictor.downsample.kernel"),
        (r"pixelwise_flow_predictor\.hourglass\.encoder\.down_blocks\.", "flow_predictor.hourglass.encoder.blocks."),
        (r"pixelwise_flow_predictor\.hourglass\.decoder\.up_blocks\.", "flow_predictor.hourglass.decoder.blocks."),
        (r"pixelwise_flow_predictor\.mask\.", "flow_predictor.mask_head."),
        (r"pixelwise_flow_predictor\.occlusion\.", "flow_predictor.occlusion_head."),
        (r"first\.", "stem."),
        (r"down_blocks\.", "down."),
        (r"up_blocks\.", "up."),
        (r"bottleneck\.r(\d+)\.", r"bottleneck.\1."),
        (r"final\.", "to_rgb."),
    ],
}

# The reference constructors' arguments per YAML section: required names, then optional names with
# the constructor defaults (which apply when a YAML leaves them out, whatever lfdm's defaults are).
_SECTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "model_params": (("num_regions", "num_channels", "estimate_affine", "revert_axis_swap",
                      "region_predictor_params", "bg_predictor_params", "generator_params"),
                     {"avd_network_params": None}),
    "region_predictor_params": (("block_expansion", "max_features", "num_blocks", "temperature"),
                                {"scale_factor": 1, "pca_based": False, "fast_svd": False, "pad": 3}),
    "bg_predictor_params": (("block_expansion", "max_features", "num_blocks"), {"bg_type": "zero"}),
    "generator_params": (("block_expansion", "max_features", "num_down_blocks", "num_bottleneck_blocks"),
                         {"skips": False, "pixelwise_flow_predictor_params": None}),
    "pixelwise_flow_predictor_params": (("block_expansion", "max_features", "num_blocks"),
                                        {"estimate_occlusion_map": False, "scale_factor": 1, "region_var": 0.01,
                                         "use_covar_heatmap": False, "use_deformed_source": True}),
}


@dataclass
class ConvertedLFAE:
    """A reference checkpoint read into lfdm: the model (eval mode, CPU), its config, frame size,
    and the training progress recorded in the checkpoint (None when absent)."""

    model: LFAE
    config: LFAEModelConfig
    frame_size: int
    epoch: int | None
    examples: int | None


def _section(data: Any, name: str, source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UserError(f"{source}: '{name}' must be a mapping, got {type(data).__name__}.")
    required, optional = _SECTIONS[name]
    missing = [k for k in required if k not in data]
    if missing:
        raise UserError(f"{source}: '{name}' lacks {', '.join(missing)} (the reference code needs them).")
    unknown = [k for k in data if k not in required and k not in optional]
    if unknown:
        raise UserError(f"{source}: unknown key(s) in '{name}': {', '.join(map(str, unknown))}.",
                        hint=f"Known keys: {', '.join(list(required) + list(optional))}.")
    return {**optional, **data}


def reference_lfae_config(data: dict[str, Any], source: str = "reference config") -> tuple[LFAEModelConfig, int]:
    """LFAEModelConfig and frame size from a reference YAML mapping (config/mug128.yaml layout)."""
    dataset = data.get("dataset_params")
    if not isinstance(dataset, dict) or "frame_shape" not in dataset:
        raise UserError(f"{source}: missing dataset_params.frame_shape (the training frame size).")
    shape = dataset["frame_shape"]
    if isinstance(shape, (list, tuple)) and len(shape) >= 2 and shape[0] == shape[1]:
        shape = shape[0]
    if not isinstance(shape, int) or isinstance(shape, bool) or shape < 8:
        raise UserError(f"{source}: dataset_params.frame_shape must be a square frame size such as 128, "
                        f"got {dataset['frame_shape']!r}.")
    if "model_params" not in data:
        raise UserError(f"{source}: missing model_params (is this a stage-one LFAE config?).")
    model = _section(data["model_params"], "model_params", source)
    rp = _section(model["region_predictor_params"], "region_predictor_params", source)
    bg = _section(model["bg_predictor_params"], "bg_predictor_params", source)
    gen = _section(model["generator_params"], "generator_params", source)
    if gen["pixelwise_flow_predictor_params"] is None:
        raise UserError(f"{source}: generator_params has no pixelwise_flow_predictor_params; LFDM's auto-encoder "
                        "needs the pixelwise flow predictor (its flow is the latent flow).")
    pfp = _section(gen.pop("pixelwise_flow_predictor_params"), "pixelwise_flow_predictor_params", source)
    mapped = {
        "num_regions": model["num_regions"],
        "num_channels": model["num_channels"],
        "estimate_affine": model["estimate_affine"],
        "revert_axis_swap": model["revert_axis_swap"],
        "region_predictor": rp,
        "bg_predictor": bg,
        "generator": {**gen, "pixelwise_flow_predictor": pfp},
    }
    # Reference YAMLs write scale factors as ints (1) and floats alike; lfdm's schema checks types.
    for section in (rp, pfp):
        for key in ("scale_factor", "temperature", "region_var"):
            if isinstance(section.get(key), int) and not isinstance(section.get(key), bool):
                section[key] = float(section[key])
    config = from_dict(LFAEModelConfig, mapped, source=source)
    config.check_frame_size(shape, source=source)
    return config, shape


def reference_to_project_key(part: str, key: str) -> str | None:
    """lfdm's state-dict key for `key` of reference module `part`, or None if it has no place."""
    for pattern, replacement in _KEY_RULES[part]:
        if re.match(pattern, key):
            return f"{part}.{re.sub('^' + pattern, replacement, key, count=1)}"
    return None


def convert_reference_state(parts: dict[str, dict[str, torch.Tensor]], model: LFAE,
                            source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Map the reference's three state dicts onto `model`'s keys, checking every name and shape."""
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    unexpected, mismatched, mismatched_names = [], [], set()
    for part in PARTS:
        for key, value in parts[part].items():
            name = reference_to_project_key(part, key)
            if name is None or name not in expected:
                unexpected.append(f"{part}.{key}")
                continue
            if tuple(value.shape) != tuple(expected[name].shape):
                mismatched.append(f"{part}.{key}: checkpoint {tuple(value.shape)} "
                                  f"vs config {tuple(expected[name].shape)}")
                mismatched_names.add(name)
                continue
            state[name] = value
    missing = [k for k in expected if k not in state and k not in mismatched_names]
    if unexpected or mismatched or missing:
        lines = []
        for title, items in (("in the checkpoint but not in the configured model", unexpected),
                             ("shape mismatch", mismatched), ("missing from the checkpoint", missing)):
            if items:
                shown = items[:6] + ([f"... and {len(items) - 6} more"] if len(items) > 6 else [])
                lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
        raise UserError(f"The weights in {source} do not fit the LFAE described by the config:\n" + "\n".join(lines),
                        hint="Pass the YAML the checkpoint was trained with (e.g. config/mug128.yaml for the "
                             "authors' MUG model).")
    return state


def read_reference_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's top-level mapping, read without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable PyTorch checkpoint of plain tensors: {first}",
                        hint="Pass the .pth file written by the reference's LFAE/train.py "
                             "(keys generator, region_predictor, bg_predictor).") from None
    if not isinstance(ckpt, dict) or not all(isinstance(ckpt.get(p), dict) for p in PARTS):
        found = ", ".join(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path} is not a stage-one (LFAE) checkpoint: expected the keys "
                        f"{', '.join(PARTS)}, found {found or 'nothing'}.",
                        hint="A stage-two checkpoint (key 'diffusion') is converted with `lfdm convert dm`.")
    return ckpt


def _strip_data_parallel(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def load_reference_lfae(checkpoint_path: str | Path, config_path: str | Path) -> ConvertedLFAE:
    """Build lfdm's LFAE from a reference checkpoint and its YAML; returns model (eval, CPU),
    config, frame size and the checkpoint's epoch / example counters."""
    config, frame_size = reference_lfae_config(load_yaml(config_path), source=str(config_path))
    ckpt = read_reference_checkpoint(checkpoint_path)
    model = LFAE(config, frame_size)
    parts = {p: _strip_data_parallel(ckpt[p]) for p in PARTS}
    state = convert_reference_state(parts, model, source=str(checkpoint_path))
    model.load_state_dict(state, strict=True)

    def counter(name: str) -> int | None:
        value = ckpt.get(name)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    return ConvertedLFAE(model=model.eval(), config=config, frame_size=frame_size,
                         epoch=counter("epoch"), examples=counter("example"))
