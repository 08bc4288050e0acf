"""Convert the authors' stage-two checkpoints (DM/train_video_flow_diffusion_*.py) to lfdm models.

A reference checkpoint is `{'example', 'diffusion': GaussianDiffusion.state_dict(),
'optimizer_diff'}`; the U-Net's weights sit under `denoise_fn.` beside the twelve schedule
buffers. The U-Net configuration is not in the checkpoint: it comes from a JSON/YAML file with the
reference's `Unet3D` / `GaussianDiffusion` arguments (`unet3d`, `gaussian_diffusion` sections, as
in dm_config.json) or from a preset naming one of the authors' runs.

Nothing is unpickled beyond tensors (`torch.load(weights_only=True)`). Deterministic tensors
stored in the checkpoint (schedule buffers, rotary frequencies) are checked against the values
this implementation computes, so a checkpoint made with another schedule is refused, not
silently sampled wrong.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from lfdm_cli.diffusion.conditions import ENCODER_DIMS
from lfdm_cli.diffusion.config import DiffusionConfig, UNet3DConfig
from lfdm_cli.diffusion.model import DMSpec, FlowDiffusion
from lfdm_cli.errors import UserError, unknown_name_error
from lfdm_cli.modelfolder import load_state_checked

UNET_PREFIX = "denoise_fn."
SCHEDULE_TOLERANCE = 1e-7

# FlowDiffusion's fixed U-Net arguments plus each dataset's script settings.
_PAPER_UNET = {"dim": 64, "dim_mults": [1, 2, 4, 8], "channels": 3 + 256, "attn_heads": 8, "attn_dim_head": 32,
               "use_bert_text_cond": True, "init_kernel_size": 7, "use_sparse_linear_attn": True,
               "resnet_groups": 8, "learn_null_cond": False, "use_deconv": True, "padding_mode": "zeros"}
_PAPER_DIFFUSION = {"image_size": 32, "num_frames": 40, "timesteps": 1000, "loss_type": "l2",
                    "use_dynamic_thres": True, "dynamic_thres_percentile": 0.9, "null_cond_prob": 0.1,
                    "text_use_bert_cls": False}
PRESETS: dict[str, dict[str, Any]] = {
    "mug": {"unet3d": dict(_PAPER_UNET), "gaussian_diffusion": dict(_PAPER_DIFFUSION)},
    "mhad": {"unet3d": dict(_PAPER_UNET), "gaussian_diffusion": dict(_PAPER_DIFFUSION)},
    "natops": {"unet3d": {**_PAPER_UNET, "learn_null_cond": True, "use_deconv": False, "padding_mode": "reflect"},
               "gaussian_diffusion": dict(_PAPER_DIFFUSION)},
}

# Reference sub-module paths -> this project's. Applied to keys with `denoise_fn.` removed.
_RES_BLOCK = [(r"mlp\.1\.", "film."), (r"block1\.proj\.", "layer1.conv."), (r"block1\.norm\.", "layer1.norm."),
              (r"block2\.proj\.", "layer2.conv."), (r"block2\.norm\.", "layer2.norm."), (r"res_conv\.", "skip.")]
_ATTN_WRAPPED = [(r"fn\.fn\.fn\.to_qkv\.", "attn.to_qkv."), (r"fn\.fn\.fn\.to_out\.", "attn.to_out."),
                 (r"fn\.norm\.", "norm.")]
_LINEAR_ATTN = [(r"fn\.fn\.to_qkv\.", "attn.to_qkv."), (r"fn\.fn\.to_out\.", "attn.to_out."),
                (r"fn\.norm\.", "norm.")]
ROTARY_KEY = re.compile(r"(^|\.)rotary_emb\.freqs$")


def _sub(rest: str, rules) -> str | None:
    for pattern, repl in rules:
        m = re.match(pattern, rest)
        if m:
            return repl + rest[m.end():]
    return None


def map_reference_key(key: str) -> str | None:
    """This project's U-Net key for a reference U-Net key (without `denoise_fn.`), or None."""
    simple = {
        "time_rel_pos_bias.relative_attention_bias.weight": "frame_bias.table.weight",
        "null_cond_emb": "null_cond",
    }
    if key in simple:
        return simple[key]
    if m := re.match(r"init_conv\.(weight|bias)$", key):
        return f"stem.{m.group(1)}"
    if m := re.match(r"time_mlp\.([13])\.(weight|bias)$", key):
        return f"time_embed.fc{1 if m.group(1) == '1' else 2}.{m.group(2)}"
    if key.startswith("init_temporal_attn."):
        rest = _sub(key[len("init_temporal_attn."):], _ATTN_WRAPPED)
        return f"stem_temporal_attn.{rest}" if rest else None
    if m := re.match(r"(downs|ups)\.(\d+)\.(\d)\.(.*)$", key):
        side, level, slot, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        prefix = f"{'down' if side == 'downs' else 'up'}_levels.{level}."
        if slot in (0, 1):
            mapped = _sub(rest, _RES_BLOCK)
            return prefix + f"res{slot + 1}." + mapped if mapped else None
        if slot == 2:
            mapped = _sub(rest, _LINEAR_ATTN)
            return prefix + "spatial_attn." + mapped if mapped else None
        if slot == 3:
            mapped = _sub(rest, _ATTN_WRAPPED)
            return prefix + "temporal_attn." + mapped if mapped else None
        if slot == 4:
            # Down: a conv. Up: a transposed conv (`4.weight`) or nearest + conv (`4.1.weight`).
            if m2 := re.match(r"(?:1\.)?(weight|bias)$", rest):
                return prefix + f"resample.conv.{m2.group(1)}"
        return None
    if m := re.match(r"mid_block([12])\.(.*)$", key):
        mapped = _sub(m.group(2), _RES_BLOCK)
        return f"mid_res{m.group(1)}.{mapped}" if mapped else None
    if m := re.match(r"mid_(spatial|temporal)_attn\.(.*)$", key):
        mapped = _sub(m.group(2), _ATTN_WRAPPED)
        return f"mid_{m.group(1)}_attn.{mapped}" if mapped else None
    if m := re.match(r"(final_conv|occlusion_map)\.([01])\.(.*)$", key):
        head = "flow_head" if m.group(1) == "final_conv" else "occlusion_head"
        if m.group(2) == "1":
            return f"{head}.proj.{m.group(3)}"
        mapped = _sub(m.group(3), _RES_BLOCK)
        return f"{head}.block.{mapped}" if mapped else None
    return None


# --------------------------------------------------------------------------------------------
# Configuration


def _read_config(config: str | Path | dict) -> dict:
    if isinstance(config, dict):
        return config
    text = str(config)
    if text.lower() in PRESETS:
        return PRESETS[text.lower()]
    path = Path(config)
    if not path.is_file():
        if path.suffix in (".json", ".yaml", ".yml") or "/" in text:
            raise UserError(f"DM config file not found: {path}")
        raise unknown_name_error("DM config preset", text, PRESETS)
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping with 'unet3d' and 'gaussian_diffusion' sections.")
    return data


def spec_from_reference_config(config: str | Path | dict, *, conditions: list[str] | None = None,
                               encoder: str = "bert") -> DMSpec:
    """DMSpec from the reference's constructor arguments (a dict, a JSON/YAML file or a preset)."""
    data = _read_config(config)
    where = str(config) if not isinstance(config, dict) else "the DM config"
    for section in ("unet3d", "gaussian_diffusion"):
        if section not in data or not isinstance(data[section], dict):
            raise UserError(f"{where} has no '{section}' section (the reference's Unet3D / GaussianDiffusion "
                            f"arguments).", hint=f"Presets: {', '.join(PRESETS)}.")
    u, g = data["unet3d"], data["gaussian_diffusion"]
    if u.get("init_dim") not in (None, u.get("dim", 64)):
        raise UserError(f"{where}: init_dim different from dim is not supported (the reference cannot run it).")
    if u.get("out_grid_dim", 2) != 2 or u.get("out_conf_dim", 1) != 1:
        raise UserError(f"{where}: the flow diffusion U-Net needs out_grid_dim 2 and out_conf_dim 1.")
    if g.get("channels", 3) != 3:
        raise UserError(f"{where}: gaussian_diffusion.channels must be 3 (flow x, flow y, occlusion).")
    if u.get("use_bert_text_cond", True):
        cond_dim = ENCODER_DIMS["bert"]
    elif u.get("cond_dim"):
        cond_dim = int(u["cond_dim"])
    else:
        raise UserError(f"{where}: unconditional U-Nets (no use_bert_text_cond, no cond_dim) are not supported.")
    attn_dim_head = int(u.get("attn_dim_head", 32))
    unet = UNet3DConfig(
        dim=int(u.get("dim", 64)), dim_mults=list(u.get("dim_mults", [1, 2, 4, 8])),
        attn_heads=int(u.get("attn_heads", 8)), attn_dim_head=attn_dim_head,
        rotary_dim=min(32, attn_dim_head), init_kernel_size=int(u.get("init_kernel_size", 7)),
        use_sparse_linear_attn=bool(u.get("use_sparse_linear_attn", True)),
        resnet_groups=int(u.get("resnet_groups", 8)), learn_null_cond=bool(u.get("learn_null_cond", False)),
        use_deconv=bool(u.get("use_deconv", True)), padding_mode=str(u.get("padding_mode", "zeros")),
        cond_dim=cond_dim)
    unet.validate(where)
    loss_type = g.get("loss_type", "l1")
    diffusion = DiffusionConfig(
        timesteps=int(g.get("timesteps", 1000)), loss_type=loss_type,
        use_dynamic_thres=bool(g.get("use_dynamic_thres", False)),
        dynamic_thres_percentile=float(g.get("dynamic_thres_percentile", 0.9)),
        null_cond_prob=float(g.get("null_cond_prob", 0.1)))
    channels = int(u.get("channels", 3))
    if channels <= 3:
        raise UserError(f"{where}: unet3d.channels must be 3 + the stage-one latent channels, got {channels}.")
    return DMSpec(unet=unet, diffusion=diffusion, fea_channels=channels - 3,
                  num_frames=int(g.get("num_frames", 40)), latent_size=int(g.get("image_size", 32)),
                  encoder=encoder, text_use_bert_cls=bool(g.get("text_use_bert_cls", False)),
                  conditions=list(conditions or []))


# --------------------------------------------------------------------------------------------
# Checkpoint


def read_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The GaussianDiffusion state dict of a reference DM checkpoint (or of a bare state dict)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint not found: {path}")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-tensor pickles
        raise UserError(f"{path} is not a loadable PyTorch checkpoint of tensors: {exc}",
                        hint="Only weights_only checkpoints are read (nothing else is unpickled).") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("diffusion"), dict):
        state = ckpt["diffusion"]
    elif isinstance(ckpt, dict) and any(str(k).startswith(UNET_PREFIX) for k in ckpt):
        state = ckpt
    else:
        keys = ", ".join(map(str, list(ckpt)[:6])) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path} does not look like an LFDM stage-two checkpoint (top-level keys: {keys}).",
                        hint="Expected the file DM/train_video_flow_diffusion_*.py saves, with a 'diffusion' entry.")
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def convert_reference_state(state: dict[str, torch.Tensor], model: FlowDiffusion, *, source: str) -> dict[str, torch.Tensor]:
    """Map a reference GaussianDiffusion state dict onto `model.unet`'s keys, checking the
    deterministic tensors it carries. Returns the U-Net state dict."""
    schedule = model.schedule.tables()
    unet_state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    freqs = model.unet.rotary.freqs
    for key, value in state.items():
        if key in schedule:
            ours = schedule[key]
            if tuple(value.shape) != tuple(ours.shape):
                raise UserError(f"{source}: schedule buffer '{key}' has {value.numel()} steps but the configuration "
                                f"says {ours.numel()}.", hint="Set gaussian_diffusion.timesteps to match.")
            diff = (value.float() - ours).abs().max().item()
            if diff > SCHEDULE_TOLERANCE:
                raise UserError(f"{source}: schedule buffer '{key}' differs from the cosine schedule by {diff:.3g}; "
                                f"this checkpoint was trained with another noise schedule.")
            continue
        if not key.startswith(UNET_PREFIX):
            unknown.append(key)
            continue
        sub = key[len(UNET_PREFIX):]
        if ROTARY_KEY.search(sub):
            if tuple(value.shape) != tuple(freqs.shape) or not torch.equal(value.float(), freqs.cpu()):
                raise UserError(f"{source}: '{key}' holds rotary frequencies that differ from the standard ones "
                                f"for attn_dim_head={model.spec.unet.attn_dim_head}.")
            continue
        mapped = map_reference_key(sub)
        if mapped is None:
            unknown.append(key)
            continue
        unet_state[mapped] = value
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" ... and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise UserError(f"{source}: keys this converter does not know: {shown}.",
                        hint="Is this a LFDM stage-two checkpoint, and does the config match it?")
    return unet_state


def load_reference_dm(checkpoint_path: str | Path, config: str | Path | dict, *,
                      conditions: list[str] | None = None, condition_rows: torch.Tensor | None = None,
                      encoder: str = "bert") -> FlowDiffusion:
    """Build an lfdm FlowDiffusion from the authors' checkpoint and its configuration.

    `config`: a dict or JSON/YAML file with the reference's `unet3d` and `gaussian_diffusion`
    arguments, or a preset name (mug, mhad, natops). `conditions` / `condition_rows` optionally
    give the class names and their (N, 768) text embeddings for the model's condition table.
    """
    spec = spec_from_reference_config(config, conditions=conditions, encoder=encoder)
    model = FlowDiffusion(spec, condition_rows=condition_rows)
    source = str(checkpoint_path)
    unet_state = convert_reference_state(read_reference_checkpoint(checkpoint_path), model, source=source)
    load_state_checked(model.unet, unet_state, source=source)
    return model.eval()
