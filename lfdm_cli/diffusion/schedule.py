"""The discrete Gaussian diffusion schedule and its closed-form quantities.

Every table is computed in float64 and then cast to float32, exactly as the reference registers
its buffers, so converted checkpoints see the same numbers (to the last bit). Tables are indexed
by integer timesteps t in [0, T-1] (t = 0 is the least noisy step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Names of the float32 tables, in the order the reference registers them.
SCHEDULE_TABLES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule in float64, betas clipped to [0, 0.9999]."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return torch.clip(betas, 0, 0.9999)


def schedule_tables(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """All derived tables from float64 betas, each cast to float32 at the end."""
    betas = betas.to(torch.float64)
    alphas = 1.0 - betas
    acp = torch.cumprod(alphas, dim=0)
    acp_prev = F.pad(acp[:-1], (1, 0), value=1.0)
    post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
    tables = {
        "betas": betas,
        "alphas_cumprod": acp,
        "alphas_cumprod_prev": acp_prev,
        "sqrt_alphas_cumprod": torch.sqrt(acp),
        "sqrt_one_minus_alphas_cumprod": torch.sqrt(1.0 - acp),
        "log_one_minus_alphas_cumprod": torch.log(1.0 - acp),
        "sqrt_recip_alphas_cumprod": torch.sqrt(1.0 / acp),
        "sqrt_recipm1_alphas_cumprod": torch.sqrt(1.0 / acp - 1),
        "posterior_variance": post_var,
        # The posterior variance is 0 at t = 0; the log is clipped there.
        "posterior_log_variance_clipped": torch.log(post_var.clamp(min=1e-20)),
        "posterior_mean_coef1": betas * torch.sqrt(acp_prev) / (1.0 - acp),
        "posterior_mean_coef2": (1.0 - acp_prev) * torch.sqrt(alphas) / (1.0 - acp),
    }
    return {name: tables[name].to(torch.float32) for name in SCHEDULE_TABLES}


def _per_sample(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """table[t] shaped (B, 1, 1, ...) to broadcast against a (B, ...) tensor of `ndim` dims."""
    return table.gather(-1, t).reshape(t.shape[0], *((1,) * (ndim - 1)))


class DiffusionSchedule(nn.Module):
    """Float32 schedule tables (non-persistent buffers: they follow from `timesteps` and `s`)."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    def __init__(self, timesteps: int = 1000, cosine_s: float = 0.008):
        super().__init__()
        self.num_timesteps = int(timesteps)
        self.cosine_s = cosine_s
        for name, value in schedule_tables(cosine_betas(timesteps, cosine_s)).items():
            self.register_buffer(name, value, persistent=False)

    def tables(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in SCHEDULE_TABLES}

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(acp_t) x_0 + sqrt(1 - acp_t) noise."""
        n = x_start.ndim
        return (_per_sample(self.sqrt_alphas_cumprod, t, n) * x_start
                + _per_sample(self.sqrt_one_minus_alphas_cumprod, t, n) * noise)

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(1/acp_t) x_t - sqrt(1/acp_t - 1) eps."""
        n = x_t.ndim
        return (_per_sample(self.sqrt_recip_alphas_cumprod, t, n) * x_t
                - _per_sample(self.sqrt_recipm1_alphas_cumprod, t, n) * eps)

    def v_target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(acp_t) noise - sqrt(1 - acp_t) x_0."""
        n = x_start.ndim
        return (_per_sample(self.sqrt_alphas_cumprod, t, n) * noise
                - _per_sample(self.sqrt_one_minus_alphas_cumprod, t, n) * x_start)

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The noise implied by a v prediction: eps = sqrt(acp_t) v + sqrt(1 - acp_t) x_t."""
        n = x_t.ndim
        return (_per_sample(self.sqrt_alphas_cumprod, t, n) * v
                + _per_sample(self.sqrt_one_minus_alphas_cumprod, t, n) * x_t)

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        n = x_t.ndim
        mean = (_per_sample(self.posterior_mean_coef1, t, n) * x_start
                + _per_sample(self.posterior_mean_coef2, t, n) * x_t)
        return (mean, _per_sample(self.posterior_variance, t, n),
                _per_sample(self.posterior_log_variance_clipped, t, n))


def dynamic_threshold(x0: torch.Tensor, percentile: float | None) -> torch.Tensor:
    """Imagen's dynamic thresholding as the reference applies it.

    s = the `percentile` quantile (linear interpolation) of |x0| over each sample, at least 1;
    x0 is clamped to [-s, s] and divided by s. `percentile=None` is the static clip to [-1, 1].
    """
    if percentile is None:
        return x0.clamp(-1.0, 1.0)
    s = torch.quantile(x0.reshape(x0.shape[0], -1).abs(), percentile, dim=-1)
    s.clamp_(min=1.0)
    s = s.view(-1, *((1,) * (x0.ndim - 1)))
    return x0.clamp(-s, s) / s
