"""Samplers: plain functions over a noise-prediction denoiser.

A denoiser is any callable `denoiser(x_t, t) -> eps` with x_t of shape (B, ...) and t an int64
(B,) tensor of timestep indices; conditioning and guidance live inside it (see `guidance.py`).

- `sample_ddpm`: ancestral sampling through every step of the schedule (the paper's sampler).
- `sample_ddim`: DDIM with any number of steps and eta. `spacing="reference"` reproduces the
  authors' implementation exactly (its timestep spacing and its use of the `alphas_cumprod_prev`
  table for the step coefficients); `spacing="trailing"` is the textbook sampler, starting at the
  noisiest step T-1 and ending on the clean sample.
- `sample_dpmpp_2m`: DPM-Solver++ (2M), second-order multistep on the data prediction, for few
  steps.

Randomness comes from `generator` (a torch.Generator). `generator=None` draws from torch's global
RNG in the reference's order, so that outputs can be compared with the authors' code after
`torch.manual_seed`. Noise is drawn on the generator's device and moved, so a CPU generator gives
the same samples on any device.
"""

from __future__ import annotations

from typing import Callable

import torch

from lfdm_cli.diffusion.schedule import DiffusionSchedule, dynamic_threshold

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int], None]

SAMPLERS = ("ddpm", "ddim", "dpmpp")
DDIM_SPACINGS = ("trailing", "reference")


def randn(shape, *, generator: torch.Generator | None, device: torch.device | str,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise from `generator` (or the global RNG when None) on `device`.

    `generator` may also be a list with one generator per batch row: row i then depends only on
    generator i, so a batch samples exactly what its rows sampled one at a time would.
    """
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype).to(device)
                          for g in generator])
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _timestep(t: int, batch: int, device) -> torch.Tensor:
    return torch.full((batch,), int(t), device=device, dtype=torch.long)


def denoised(schedule: DiffusionSchedule, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
             *, clip_denoised: bool = True, dynamic_percentile: float | None = 0.9) -> torch.Tensor:
    """x_0 predicted from the noise prediction, thresholded as the reference does when sampling."""
    x0 = schedule.predict_start_from_noise(x, t, eps)
    return dynamic_threshold(x0, dynamic_percentile) if clip_denoised else x0


# --------------------------------------------------------------------------------------------
# DDPM


def ddpm_posterior(schedule: DiffusionSchedule, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   *, clip_denoised: bool = True, dynamic_percentile: float | None = 0.9):
    """Mean, variance and log variance of p(x_{t-1} | x_t) given the noise prediction."""
    x0 = denoised(schedule, x, t, eps, clip_denoised=clip_denoised, dynamic_percentile=dynamic_percentile)
    return schedule.q_posterior(x0, x, t)


def ddpm_step(denoiser: Denoiser, schedule: DiffusionSchedule, x: torch.Tensor, t: int | torch.Tensor,
              *, generator: torch.Generator | None = None, clip_denoised: bool = True,
              dynamic_percentile: float | None = 0.9) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1}. Noise is drawn at every step (also at t = 0, where it
    is masked out) to keep the reference's RNG stream."""
    b = x.shape[0]
    if not torch.is_tensor(t):
        t = _timestep(t, b, x.device)
    eps = denoiser(x, t)
    mean, _, log_var = ddpm_posterior(schedule, x, t, eps, clip_denoised=clip_denoised,
                                      dynamic_percentile=dynamic_percentile)
    noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    nonzero = (1 - (t == 0).float()).reshape(b, *((1,) * (x.ndim - 1)))
    return mean + nonzero * (0.5 * log_var).exp() * noise


@torch.no_grad()
def sample_ddpm(denoiser: Denoiser, schedule: DiffusionSchedule, shape, *, generator: torch.Generator | None = None,
                x_T: torch.Tensor | None = None, device=None, clip_denoised: bool = True,
                dynamic_percentile: float | None = 0.9, callback: StepCallback | None = None) -> torch.Tensor:
    """Ancestral DDPM through all T steps (T network calls)."""
    device = device if device is not None else schedule.betas.device
    x = randn(shape, generator=generator, device=device) if x_T is None else x_T
    total = schedule.num_timesteps
    for i, t in enumerate(reversed(range(total))):
        x = ddpm_step(denoiser, schedule, x, t, generator=generator, clip_denoised=clip_denoised,
                      dynamic_percentile=dynamic_percentile)
        if callback is not None:
            callback(i + 1, total)
    return x


# --------------------------------------------------------------------------------------------
# DDIM


def ddim_timesteps(num_timesteps: int, steps: int, spacing: str = "trailing") -> list[tuple[int, int | None]]:
    """(t, t_next) pairs visited by DDIM; t_next None means "the clean sample".

    reference: linspace(0, T, steps + 2) without its last point, truncated to int and reversed,
    as the authors' code does it: steps=4 visits 800, 600, 400, 200 and then lands on 0 (which
    its coefficient table treats as clean); T-1 is never visited.
    trailing: `steps` points evenly spread from T-1 down, then the clean sample.
    """
    if steps < 1:
        raise ValueError(f"DDIM needs at least one step, got {steps}")
    if spacing == "reference":
        times = torch.linspace(0.0, num_timesteps, steps=steps + 2)[:-1].int().tolist()
        times = list(reversed(times))
        return list(zip(times[:-1], times[1:]))
    if spacing == "trailing":
        times = _trailing_times(num_timesteps, steps)
        return list(zip(times, times[1:] + [None]))
    raise ValueError(f"unknown DDIM spacing {spacing!r}; choose from {DDIM_SPACINGS}")


def _trailing_times(num_timesteps: int, steps: int) -> list[int]:
    if steps > num_timesteps:
        raise ValueError(f"{steps} steps exceed the schedule's {num_timesteps} timesteps")
    points = torch.linspace(num_timesteps - 1, 0, steps + 1, dtype=torch.float64)[:-1]
    return [int(v) for v in points.round().tolist()]


def ddim_step_reference(denoiser: Denoiser, schedule: DiffusionSchedule, x: torch.Tensor, time: int, time_next: int,
                        *, eta: float, generator: torch.Generator | None = None, clip_denoised: bool = True,
                        dynamic_percentile: float | None = 0.9) -> tuple[torch.Tensor, dict]:
    """One DDIM step exactly as the authors' `ddim_sample` computes it.

    x_0 comes from the `alphas_cumprod` table at `time`, but the step uses `alphas_cumprod_prev`
    at `time` and `time_next` (one index off). Returns the new x and the step's intermediates.
    """
    b = x.shape[0]
    alpha = schedule.alphas_cumprod_prev[time]
    alpha_next = schedule.alphas_cumprod_prev[time_next]
    t = _timestep(time, b, x.device)
    eps = denoiser(x, t)
    x0_raw = schedule.predict_start_from_noise(x, t, eps)
    x0 = dynamic_threshold(x0_raw, dynamic_percentile) if clip_denoised else x0_raw
    sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
    c = ((1 - alpha_next) - sigma ** 2).sqrt()
    out = x0 * alpha_next.sqrt() + c * eps
    noise = None
    # The reference also draws (and multiplies by sigma = 0) when eta = 0; skipping the draw keeps
    # eta = 0 free of randomness and changes no value.
    if time_next > 0 and eta != 0:
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        out = out + sigma * noise
    return out, {"t": t, "eps": eps, "x0_unclipped": x0_raw, "x0": x0, "noise": noise}


def ddim_step(denoiser: Denoiser, schedule: DiffusionSchedule, x: torch.Tensor, time: int, time_next: int | None,
              *, eta: float, generator: torch.Generator | None = None, clip_denoised: bool = True,
              dynamic_percentile: float | None = 0.9) -> torch.Tensor:
    """One textbook DDIM step (Song et al., eq. 12) from `time` to `time_next` (None = clean).

    The noise direction is re-derived from the thresholded x_0, so the step is the DDIM update of
    the thresholded denoiser (the reference keeps the raw network output instead)."""
    b = x.shape[0]
    acp = schedule.alphas_cumprod
    a = acp[time].double()
    a_next = acp[time_next].double() if time_next is not None else torch.ones((), dtype=torch.float64,
                                                                                device=acp.device)
    t = _timestep(time, b, x.device)
    x0 = denoised(schedule, x, t, denoiser(x, t), clip_denoised=clip_denoised,
                  dynamic_percentile=dynamic_percentile)
    eps = (x - a.sqrt().to(x.dtype) * x0) / (1 - a).sqrt().to(x.dtype)
    sigma = eta * ((1 - a_next) / (1 - a) * (1 - a / a_next)).clamp(min=0).sqrt()
    c = (1 - a_next - sigma ** 2).clamp(min=0).sqrt()
    out = a_next.sqrt().to(x.dtype) * x0 + c.to(x.dtype) * eps
    if time_next is not None and eta != 0:
        out = out + sigma.to(x.dtype) * randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return out


@torch.no_grad()
def sample_ddim(denoiser: Denoiser, schedule: DiffusionSchedule, shape, *, steps: int, eta: float = 0.0,
                spacing: str = "trailing", generator: torch.Generator | None = None,
                x_T: torch.Tensor | None = None, device=None, clip_denoised: bool = True,
                dynamic_percentile: float | None = 0.9, callback: StepCallback | None = None) -> torch.Tensor:
    """DDIM with `steps` network calls. eta=0 is deterministic given x_T (no random draws)."""
    device = device if device is not None else schedule.betas.device
    pairs = ddim_timesteps(schedule.num_timesteps, steps, spacing)
    x = randn(shape, generator=generator, device=device) if x_T is None else x_T
    for i, (time, time_next) in enumerate(pairs):
        if spacing == "reference":
            x, _ = ddim_step_reference(denoiser, schedule, x, time, time_next, eta=eta, generator=generator,
                                       clip_denoised=clip_denoised, dynamic_percentile=dynamic_percentile)
        else:
            x = ddim_step(denoiser, schedule, x, time, time_next, eta=eta, generator=generator,
                          clip_denoised=clip_denoised, dynamic_percentile=dynamic_percentile)
        if callback is not None:
            callback(i + 1, len(pairs))
    return x


# --------------------------------------------------------------------------------------------
# DPM-Solver++ (2M)


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, schedule: DiffusionSchedule, shape, *, steps: int,
                    generator: torch.Generator | None = None, x_T: torch.Tensor | None = None, device=None,
                    clip_denoised: bool = True, dynamic_percentile: float | None = 0.9,
                    callback: StepCallback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) on the discrete schedule, `steps` network calls.

    Steps are the trailing DDIM times (T-1 down); each step integrates the data-prediction ODE in
    log-SNR lambda = log(alpha/sigma), second order from the previous data prediction; the final
    step lands on the clean sample with the first-order update (its lambda is infinite).
    Deterministic given x_T.
    """
    device = device if device is not None else schedule.betas.device
    times = _trailing_times(schedule.num_timesteps, steps)
    acp = schedule.alphas_cumprod.double()
    x = randn(shape, generator=generator, device=device) if x_T is None else x_T
    b = x.shape[0]
    prev_x0 = None
    prev_h = None
    for i, time in enumerate(times):
        t = _timestep(time, b, x.device)
        x0 = denoised(schedule, x, t, denoiser(x, t), clip_denoised=clip_denoised,
                      dynamic_percentile=dynamic_percentile)
        if i == len(times) - 1:
            x = x0
        else:
            a_t, a_n = acp[time], acp[times[i + 1]]
            alpha_t, sigma_t = a_t.sqrt(), (1 - a_t).sqrt()
            alpha_n, sigma_n = a_n.sqrt(), (1 - a_n).sqrt()
            h = (torch.log(alpha_n) - torch.log(sigma_n)) - (torch.log(alpha_t) - torch.log(sigma_t))
            if prev_x0 is None:
                d = x0
            else:
                r = prev_h / h
                w = float(1 / (2 * r))
                d = (1 + w) * x0 - w * prev_x0
            x = float(sigma_n / sigma_t) * x - float(alpha_n * torch.expm1(-h)) * d
            prev_x0, prev_h = x0, h
        if callback is not None:
            callback(i + 1, len(times))
    return x


def sample(name: str, denoiser: Denoiser, schedule: DiffusionSchedule, shape, *, steps: int | None = None,
           eta: float = 0.0, spacing: str = "trailing", generator: torch.Generator | None = None,
           x_T: torch.Tensor | None = None, device=None, clip_denoised: bool = True,
           dynamic_percentile: float | None = 0.9, callback: StepCallback | None = None) -> torch.Tensor:
    """Dispatch by sampler name (`ddpm`, `ddim`, `dpmpp`). `steps` is ignored by ddpm (always T)."""
    common = dict(generator=generator, x_T=x_T, device=device, clip_denoised=clip_denoised,
                  dynamic_percentile=dynamic_percentile, callback=callback)
    if name == "ddpm":
        return sample_ddpm(denoiser, schedule, shape, **common)
    if steps is None:
        raise ValueError(f"sampler {name!r} needs a number of steps")
    if name == "ddim":
        return sample_ddim(denoiser, schedule, shape, steps=steps, eta=eta, spacing=spacing, **common)
    if name == "dpmpp":
        return sample_dpmpp_2m(denoiser, schedule, shape, steps=steps, **common)
    raise ValueError(f"unknown sampler {name!r}; choose from {SAMPLERS}")


__all__ = [
    "Denoiser", "SAMPLERS", "DDIM_SPACINGS", "randn", "denoised", "ddpm_posterior", "ddpm_step",
    "sample_ddpm", "ddim_timesteps", "ddim_step_reference", "ddim_step", "sample_ddim",
    "sample_dpmpp_2m", "sample",
]
