"""Classifier-free guidance as a denoiser wrapper.

eps = eps_null + g * (eps_cond - eps_null). g = 1 is the conditional network alone (one pass, as
the authors sample); g = 0 is the unconditional network alone (one pass); any other g evaluates
the conditional and the null batch together in one pass of twice the batch size (the reference
makes two separate passes; per-sample results are the same up to float rounding, since nothing in
the network mixes samples of a batch). `max_batch` caps the rows of one network call: on a CPU,
large samples one at a time keep their activations in cache and run faster than one large batch.
For a v-prediction network, the guided v is turned into the noise it implies (guidance is
linear, so this equals guiding the implied noise), so every sampler works on eps alone.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch


class ConditionalNet(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                 null_mask: torch.Tensor | None = None, *, latent: torch.Tensor | None = None) -> torch.Tensor: ...

    def null_embedding(self, batch: int) -> torch.Tensor: ...

    def project_latent(self, fea: torch.Tensor) -> torch.Tensor: ...


def repeat_over_frames(fea: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, C, h, w) image latent -> (B, C, F, h, w), the U-Net's conditioning channels."""
    return fea.unsqueeze(2).repeat(1, 1, frames, 1, 1)


class GuidedDenoiser:
    """`denoiser(x_t, t) -> eps` for one image latent and condition, with guidance scale g.

    net: the U-Net; fea: (B, C, h, w) image latent (the network sees it concatenated after x_t on
    the channel axis, repeated over frames); cond: (B, D) condition embeddings; null_mask: (B,) bool, rows that use
    the null embedding instead of `cond` (the "None" condition); v_schedule: the schedule of a
    v-prediction network (None for an eps network); max_batch: the most rows per network call
    (None: all at once).
    """

    def __init__(self, net: ConditionalNet, fea: torch.Tensor, cond: torch.Tensor | None, scale: float = 1.0,
                 null_mask: torch.Tensor | None = None, v_schedule=None, max_batch: int | None = None):
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.net = net
        self.max_batch = max_batch
        self.v_schedule = v_schedule
        self.fea = fea
        self.cond = cond
        self.scale = float(scale)
        self.null_mask = null_mask
        # The latent's share of the stem convolution does not change between steps: once per sample.
        with torch.no_grad():
            self.latent = net.project_latent(fea)
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Under autocast the network answers in half precision; the sampler works in x's dtype.
        out = self._guided(x, t).to(x.dtype)
        return out if self.v_schedule is None else self.v_schedule.eps_from_v(x, t, out)

    def _guided(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        self.calls += 1
        latent = self.latent.to(x.dtype)
        if self.scale == 1.0:
            return self._net(x, t, self.cond, self.null_mask, latent)
        if self.scale == 0.0 or self.cond is None:
            return self._net(x, t, None, None, latent)
        null = self.net.null_embedding(b).to(self.cond.dtype)
        cond = self.cond
        if self.null_mask is not None:
            cond = torch.where(self.null_mask.reshape(-1, 1).bool(), null, cond)
        both = self._net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]), None,
                         torch.cat([latent, latent]))
        eps_cond, eps_null = both[:b], both[b:]
        return eps_null + (eps_cond - eps_null) * self.scale

    def _net(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, null_mask: torch.Tensor | None,
             latent: torch.Tensor) -> torch.Tensor:
        """The network on all rows, `max_batch` rows per call."""
        n, step = x.shape[0], self.max_batch or x.shape[0]
        if step >= n:
            return self.net(x, t, cond, null_mask, latent=latent)

        def rows(v, i):
            return None if v is None else v[i:i + step]

        return torch.cat([self.net(x[i:i + step], t[i:i + step], rows(cond, i), rows(null_mask, i),
                                   latent=latent[i:i + step]) for i in range(0, n, step)])


def guided_denoiser(net: ConditionalNet, fea: torch.Tensor, cond: torch.Tensor | None, scale: float = 1.0,
                    null_mask: torch.Tensor | None = None, v_schedule=None,
                    max_batch: int | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return GuidedDenoiser(net, fea, cond, scale, null_mask, v_schedule, max_batch)
