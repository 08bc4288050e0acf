"""Mixed-precision names, what each device can run, and the autocast region they mean.

Shared by training (`lfdm train --precision`) and generation (`lfdm generate --precision`):
fp32 is plain float32; bf16 and fp16 are autocast regions of that dtype (the networks' matmuls
and convolutions in half precision, everything else float32).
"""

from __future__ import annotations

import contextlib

import torch

from lfdm_cli.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")


def check_cuda_bf16(precision: str, device: torch.device) -> None:
    """A UserError when bf16 is asked of a GPU that cannot run it."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU does not support bfloat16.", hint="Use fp16 or fp32.")


def autocast(device: torch.device, precision: str):
    """The autocast context of `precision` on `device` (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
