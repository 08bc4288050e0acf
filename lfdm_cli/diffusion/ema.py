"""Exponential moving average of a model's weights (sampling uses the averaged weights).

shadow <- decay * shadow + (1 - decay) * weights after each optimizer step. With `warmup`, the
decay starts low and rises as min(decay, (1 + n) / (10 + n)) over the first updates, so early
averages are not dominated by the random initialisation. Buffers are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        shadow_params = dict(self.shadow.named_parameters())
        for name, p in model.named_parameters():
            shadow_params[name].lerp_(p.detach().to(shadow_params[name].dtype), 1.0 - decay)
        shadow_buffers = dict(self.shadow.named_buffers())
        for name, b in model.named_buffers():
            if name in shadow_buffers:
                shadow_buffers[name].copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's state dict (what a model folder's `dm_ema` part holds)."""
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int = 0) -> None:
        self.shadow.load_state_dict(state)
        self.updates = updates
