"""The stage-two training objective: epsilon (or v) prediction with condition dropout.

For a clean flow volume x_0: draw t ~ U{0..T-1}, noise ~ N(0, I), x_t = q_sample(x_0, t, noise);
drop each sample's condition (use the null embedding) with probability `null_cond_prob` or where
its label is the null condition; the loss is MSE (or L1) between the noise and the prediction
(with `prediction="v"`, between v = sqrt(acp_t) noise - sqrt(1 - acp_t) x_0 and the prediction).

Random draws happen in the reference's order (t, then noise, then the dropout uniforms), so with
`generator=None` and the same `torch.manual_seed` this reproduces the authors' `forward` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lfdm_cli.diffusion.guidance import repeat_over_frames
from lfdm_cli.diffusion.schedule import DiffusionSchedule, dynamic_threshold


@dataclass
class LossOutput:
    loss: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    x_noisy: torch.Tensor
    pred_noise: torch.Tensor
    null_mask: torch.Tensor

    def pred_x0(self, schedule: DiffusionSchedule, dynamic_percentile: float | None = 0.9) -> torch.Tensor:
        """The thresholded x_0 prediction of this step (for previews), without gradients."""
        with torch.no_grad():
            x0 = schedule.predict_start_from_noise(self.x_noisy, self.t, self.pred_noise.detach())
            return dynamic_threshold(x0, dynamic_percentile)


def _draw_device(generator: torch.Generator | None, like: torch.Tensor):
    return like.device if generator is None else generator.device


def dropout_mask(batch: int, prob: float, *, generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
    """(batch,) bool, True with probability `prob`. Draws nothing when prob is 0 or 1."""
    if prob == 1:
        return torch.ones(batch, dtype=torch.bool, device=device)
    if prob == 0:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    draw_dev = device if generator is None else generator.device
    u = torch.zeros(batch, device=draw_dev).uniform_(0, 1, generator=generator)
    return (u < prob).to(device)


def diffusion_loss(net, schedule: DiffusionSchedule, x0: torch.Tensor, fea: torch.Tensor,
                   cond: torch.Tensor | None, *, null_cond_prob: float = 0.1, none_mask: torch.Tensor | None = None,
                   loss_type: str = "l2", generator: torch.Generator | None = None,
                   exact_input: bool = False, prediction: str = "eps") -> LossOutput:
    """Training loss for a batch.

    net: the U-Net (`net(inp, t, cond, null_mask)`); x0: (B, 3, F, h, w) clean flow volume;
    fea: (B, C, h, w) image latent; cond: (B, D) condition embeddings (gradients flow into them,
    so a learned table trains); none_mask: (B,) bool, samples whose label is the null condition.
    exact_input: feed the network the reference's concatenated input instead of the (equal up to
    float rounding, faster) split stem. prediction: "eps" (the reference) or "v"; the returned
    `pred_noise` is the noise the prediction implies either way.
    """
    if prediction not in ("eps", "v"):
        raise ValueError(f"unknown prediction target {prediction!r}")
    b = x0.shape[0]
    dev = x0.device
    t = torch.randint(0, schedule.num_timesteps, (b,), generator=generator,
                      device=_draw_device(generator, x0)).long().to(dev)
    if generator is None:
        noise = torch.randn_like(x0)
    else:
        noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype).to(dev)
    x_noisy = schedule.q_sample(x0, t, noise)
    null_mask = dropout_mask(b, null_cond_prob, generator=generator, device=dev)
    if none_mask is not None:
        null_mask = torch.logical_or(null_mask, none_mask.to(dev).bool())
    if exact_input:
        inp = torch.cat([x_noisy, repeat_over_frames(fea, x0.shape[2]).to(x_noisy.dtype)], dim=1)
        pred = net(inp, t, cond, null_mask)
    else:
        pred = net(x_noisy, t, cond, null_mask, latent=net.project_latent(fea.to(x_noisy.dtype)))
    target = noise if prediction == "eps" else schedule.v_target(x0, t, noise)
    if loss_type == "l2":
        loss = F.mse_loss(target, pred)
    elif loss_type == "l1":
        loss = F.l1_loss(target, pred)
    else:
        raise ValueError(f"unknown loss type {loss_type!r}")
    pred_noise = pred if prediction == "eps" else schedule.eps_from_v(x_noisy, t, pred)
    return LossOutput(loss=loss, t=t, noise=noise, x_noisy=x_noisy, pred_noise=pred_noise, null_mask=null_mask)
