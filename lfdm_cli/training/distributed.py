"""Process-group setup for `torchrun` and batch statistics shared across processes.

A command launched by `torchrun --nproc_per_node N` finds RANK / WORLD_SIZE / LOCAL_RANK (and
MASTER_ADDR / MASTER_PORT) in its environment; without them it runs as the only process. The
backend follows the device: NCCL on CUDA (device cuda:LOCAL_RANK), gloo on CPU.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lfdm_cli.device import resolve_device
from lfdm_cli.errors import UserError


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"Environment variable {name}={value!r} is not an integer.",
                        hint="It is set by torchrun; launch with `torchrun --nproc_per_node N ...`.") from None


def setup_distributed(device_spec: str = "auto", timeout_s: float = 1800.0) -> DistributedContext:
    """Resolve the device and, under torchrun (WORLD_SIZE > 1), join the process group."""
    world = _env_int("WORLD_SIZE") or 1
    if world <= 1:
        return DistributedContext(device=resolve_device(device_spec))
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK")
    if rank is None or local_rank is None:
        raise UserError("WORLD_SIZE is set but RANK or LOCAL_RANK is not.",
                        hint="Launch distributed runs with `torchrun --nproc_per_node N lfdm train ...`.")
    spec = (device_spec or "auto").lower()
    if spec.startswith("cuda:"):
        raise UserError(f"--device {device_spec} names one GPU, but this is a {world}-process run.",
                        hint="Under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda or auto.")
    base = resolve_device(spec)
    if base.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) "
                            "are visible.", hint="Use --nproc_per_node at most the number of GPUs per node.")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    initialized_here = False
    if not dist.is_initialized():
        kwargs = {"backend": backend, "init_method": "env://", "rank": rank, "world_size": world,
                  "timeout": _dt.timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
        initialized_here = True
    return DistributedContext(rank=rank, world_size=world, local_rank=local_rank, device=device,
                              initialized_here=initialized_here)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of every process's input is the sum of all gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def differentiable_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor)


class CrossProcessBatchNorm(_BatchNorm):
    """Batch normalisation whose statistics cover the whole global batch, on any device.

    torch's SyncBatchNorm runs only on GPUs; this one uses differentiable all-reduces, so a
    multi-process CPU (gloo) run normalises exactly as one process with the global batch would.
    Its state dict is that of the BatchNorm it replaces.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        # Two passes (mean, then centred squares) keep the variance as exact as one process's.
        total = differentiable_all_reduce(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = differentiable_all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def _replace_batchnorm(module: nn.Module, factory) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, (CrossProcessBatchNorm, nn.SyncBatchNorm)):
        new = factory(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats)
        if module.affine:
            new.weight = module.weight
            new.bias = module.bias
        new.running_mean = module.running_mean
        new.running_var = module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in list(module.named_children()):
        new_child = _replace_batchnorm(child, factory)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def synchronize_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm in `module` (in place) by one with cross-process statistics.

    Parameters and buffers are shared with the replaced layers, so an optimizer built before or
    after the call sees the same tensors and the state dict keeps its names.
    """
    if device.type == "cuda":
        return _replace_batchnorm(module, lambda *a: nn.SyncBatchNorm(*a).to(device))
    return _replace_batchnorm(module, lambda *a: CrossProcessBatchNorm(*a).to(device))


def all_reduce_mean(values: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    if ctx.enabled:
        values = values.clone()
        dist.all_reduce(values)
        values /= ctx.world_size
    return values


def all_reduce_max(values: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    if ctx.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values
