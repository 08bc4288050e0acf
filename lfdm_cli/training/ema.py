"""Exponential moving average of a model's weights, kept beside the raw weights in checkpoints."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weights, every `update_every` steps.

    Before `start_step` the average simply copies the weights (early weights are noise, and
    averaging them in only slows the average down). Integer buffers (BatchNorm counters) and
    other non-float tensors are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, start_step: int = 0, update_every: int = 1):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.start_step = start_step
        self.update_every = max(1, update_every)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the weights after optimizer step `step` (1-based count of completed steps)."""
        if step % self.update_every != 0:
            return
        current = model.state_dict()
        copy = step < self.start_step
        for name, value in current.items():
            shadow = self.shadow[name]
            if copy or not value.is_floating_point():
                shadow.copy_(value)
            else:
                shadow.lerp_(value.to(shadow.dtype), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"EMA state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, value in state.items():
            self.shadow[name].copy_(value)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow, strict=True)
