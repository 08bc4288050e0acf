"""Device selection shared by every command (`--device auto|cpu|cuda|cuda:N`)."""

from __future__ import annotations

import torch

from lfdm_cli.errors import UserError


def resolve_device(spec: str = "auto") -> torch.device:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {spec}: CUDA is not available on this machine.",
                hint="Use --device cpu (or auto), or install a CUDA build of torch.",
            )
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible."
            )
        return dev
    raise UserError(f"--device {spec!r} is not understood.", hint="Use auto, cpu, cuda or cuda:N.")
