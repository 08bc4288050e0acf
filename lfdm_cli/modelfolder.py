"""Model folders: `model.yaml` plus one safetensors file per part.

A trained model is a folder, as in diffusers: `model.yaml` (architecture, resolution, frame
count, condition names, provenance) and `<part>.safetensors` for each part (`lfae`, `dm`,
`dm_ema`, `conditions`, ...). Saving is atomic (the folder appears complete or not at all);
loading checks every tensor name and shape against the module it goes into.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lfdm_cli import __version__
from lfdm_cli.atomic import atomic_dir
from lfdm_cli.errors import UserError

MODEL_YAML = "model.yaml"
FORMAT = "lfdm-model/1"


def _contiguous(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.contiguous()
    return out


def save_model_folder(path: str | Path, meta: dict[str, Any], parts: dict[str, dict[str, torch.Tensor]],
                      *, overwrite: bool = False, float16: bool = False) -> Path:
    """Write a model folder atomically. `parts` maps a part name to its state dict."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"Model folder {path} already exists.", hint="Pass --overwrite to replace it.")
    meta = dict(meta)
    meta.setdefault("format", FORMAT)
    meta["parts"] = sorted(parts)  # what the folder holds, whatever the source meta said
    prov = dict(meta.get("provenance") or {})
    prov.setdefault("package_version", __version__)
    prov.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta["provenance"] = prov
    if float16:
        meta["storage_dtype"] = "float16"
    with atomic_dir(path, overwrite=overwrite) as tmp:
        for name, state in parts.items():
            save_file(_contiguous(state, torch.float16 if float16 else None), str(tmp / f"{name}.safetensors"),
                      metadata={"format": FORMAT, "part": name})
        (tmp / MODEL_YAML).write_text(yaml.safe_dump(meta, sort_keys=False))
    return path


@dataclass
class ModelFolder:
    path: Path
    meta: dict[str, Any]

    def part_path(self, part: str) -> Path:
        return self.path / f"{part}.safetensors"

    def has(self, part: str) -> bool:
        return self.part_path(part).is_file()

    @property
    def parts(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.safetensors"))

    def load_tensors(self, part: str, dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
        file = self.part_path(part)
        if not file.is_file():
            raise UserError(f"Model folder {self.path} has no '{part}' part ({file.name} is missing).",
                            hint=f"Parts present: {', '.join(self.parts) or 'none'}.")
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{file} is not a readable safetensors file: {exc}") from None
        if dtype is not None:
            # float16 storage is a size choice only; computation always starts from float32.
            tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
        return tensors

    def load_into(self, part: str, module: torch.nn.Module) -> None:
        """Load a part into `module`, reporting every missing, unexpected or mis-shaped tensor."""
        load_state_checked(module, self.load_tensors(part), source=str(self.part_path(part)))

    def digest(self) -> str:
        """Short content hash of model.yaml and every part (identifies a model in sidecars)."""
        h = hashlib.sha256()
        for file in [self.path / MODEL_YAML] + sorted(self.path.glob("*.safetensors")):
            h.update(file.name.encode())
            with open(file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:16]


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        lines = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                shown = items[:8] + ([f"... and {len(items) - 8} more"] if len(items) > 8 else [])
                lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
        raise UserError(f"Weights in {source} do not fit the model built from its configuration:\n"
                        + "\n".join(lines),
                        hint="Check that model.yaml matches the weights (was the file edited or mixed up?).")
    module.load_state_dict(state, strict=True)


def load_model_folder(path: str | Path) -> ModelFolder:
    path = Path(path)
    if not path.exists():
        raise UserError(f"Model folder not found: {path}")
    if not path.is_dir() or not (path / MODEL_YAML).is_file():
        raise UserError(f"{path} is not an lfdm model folder (no {MODEL_YAML}).",
                        hint="A model folder holds model.yaml and <part>.safetensors files; "
                             "`lfdm train` and `lfdm convert` write them.")
    try:
        meta = yaml.safe_load((path / MODEL_YAML).read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path / MODEL_YAML} is not valid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path / MODEL_YAML} must hold a mapping.")
    return ModelFolder(path=path, meta=meta)
