"""The v-prediction option: its algebra, its loss target, and sampling through eps-only samplers."""

from __future__ import annotations

import pytest
import torch

from lfdm_cli.diffusion import samplers as S
from lfdm_cli.diffusion.config import DiffusionConfig, UNet3DConfig
from lfdm_cli.diffusion.guidance import GuidedDenoiser
from lfdm_cli.diffusion.model import DMSpec, FlowDiffusion
from lfdm_cli.diffusion.objective import diffusion_loss
from lfdm_cli.diffusion.schedule import DiffusionSchedule, _per_sample


@pytest.fixture(scope="module")
def schedule():
    return DiffusionSchedule(1000)


def test_v_roundtrip_recovers_noise_and_x0(schedule):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 2, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, 250, 500, 990, 999])
    x_t = schedule.q_sample(x0, t, noise)
    v = schedule.v_target(x0, t, noise)
    eps = schedule.eps_from_v(x_t, t, v)
    assert torch.allclose(eps, noise, atol=1e-5)
    # x0 through the samplers' eps formula: float32 cancellation grows as acp_t -> 0, so allow
    # more at the last steps (acp_999 is ~1e-9 with the clipped cosine betas).
    x0_back = schedule.predict_start_from_noise(x_t, t, eps)
    err = (x0_back - x0).abs().amax(dim=(1, 2, 3, 4))
    assert (err[:4] < 1e-3).all() and (err[4:] < 0.5).all()


class OracleNet:
    """Knows the single clean volume `c`, predicts the exact eps or v for any x_t."""

    def __init__(self, schedule, c, target):
        self.schedule, self.c, self.target = schedule, c, target

    def project_latent(self, fea):
        return fea

    def null_embedding(self, batch):
        return torch.zeros(batch, 2)

    def __call__(self, x, t, cond=None, null_mask=None, *, latent=None):
        n = x.ndim
        a = _per_sample(self.schedule.sqrt_alphas_cumprod.double(), t, n)
        s = _per_sample(self.schedule.sqrt_one_minus_alphas_cumprod.double(), t, n)
        eps = (x.double() - a * self.c) / s
        return (eps if self.target == "eps" else a * eps - s * self.c).float()


@pytest.mark.parametrize("target", ["eps", "v"])
def test_loss_target_matches_prediction_kind(schedule, target):
    c = torch.full((2, 3, 2, 4, 4), 0.5)
    net = OracleNet(schedule, c.double(), target)
    fea = torch.zeros(2, 1, 4, 4)
    right = diffusion_loss(net, schedule, c, fea, None, null_cond_prob=0.0, prediction=target,
                           generator=torch.Generator().manual_seed(1))
    wrong = diffusion_loss(net, schedule, c, fea, None, null_cond_prob=0.0,
                           prediction="v" if target == "eps" else "eps", generator=torch.Generator().manual_seed(1))
    assert right.loss.item() < 1e-8 < wrong.loss.item()
    assert torch.allclose(right.noise, right.pred_noise, atol=1e-3)


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("dpmpp", 10)])
def test_v_network_samples_through_eps_samplers(schedule, sampler, steps):
    c = torch.full((2, 3, 2, 4, 4), 0.4)
    net = OracleNet(schedule, c.double(), "v")
    den = GuidedDenoiser(net, torch.zeros(2, 1, 4, 4), None, 1.0, v_schedule=schedule)
    out = S.sample(sampler, den, schedule, tuple(c.shape), steps=steps, generator=torch.Generator().manual_seed(2),
                   device="cpu", clip_denoised=True, dynamic_percentile=None)
    assert (out - c).abs().max().item() < 1e-3
    # Without the conversion the samplers would read v as eps and land elsewhere.
    raw = GuidedDenoiser(net, torch.zeros(2, 1, 4, 4), None, 1.0)
    bad = S.sample(sampler, raw, schedule, tuple(c.shape), steps=steps, generator=torch.Generator().manual_seed(2),
                   device="cpu", clip_denoised=True, dynamic_percentile=None)
    assert (bad - c).abs().max().item() > 5e-3


def test_flow_diffusion_v_option_trains_and_samples():
    unet = UNet3DConfig(dim=8, dim_mults=[1, 2], attn_heads=2, attn_dim_head=8, spatial_attn_dim_head=8, cond_dim=6)
    spec = DMSpec(unet=unet, diffusion=DiffusionConfig(timesteps=50, prediction="v"), fea_channels=4, num_frames=3,
                  latent_size=8, conditions=["a", "b"])
    torch.manual_seed(0)
    model = FlowDiffusion(spec)
    x0 = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    fea = torch.randn(2, 4, 8, 8)
    out = model.loss_for_names(x0, fea, ["a", "b"], generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    cond, null = model.embed(["a", "b"])
    assert model.denoiser(fea, cond, 1.0, null).v_schedule is model.schedule
    sample = model.sample(fea, cond, null_mask=null, steps=3, generator=torch.Generator().manual_seed(0))
    assert sample.shape == (2, 3, 3, 8, 8) and torch.isfinite(sample).all()


def test_displacement_flow_target_roundtrips_and_centres_the_volume():
    unet = UNet3DConfig(dim=8, dim_mults=[1, 2], attn_heads=2, attn_dim_head=8, spatial_attn_dim_head=8, cond_dim=6)
    grid_spec = DMSpec(unet=unet, fea_channels=4, num_frames=3, latent_size=8, conditions=["a"])
    disp_spec = DMSpec(unet=unet, diffusion=DiffusionConfig(flow_target="displacement", displacement_scale=8.0),
                       fea_channels=4, num_frames=3, latent_size=8, conditions=["a"])
    from lfdm_cli.lfae.layers import coordinate_grid

    g = torch.Generator().manual_seed(0)
    identity = coordinate_grid(8, 8)
    flow = identity + 0.03 * torch.randn(2, 3, 8, 8, 2, generator=g)
    occ = torch.rand(2, 3, 1, 8, 8, generator=g)
    grid_model, disp_model = FlowDiffusion(grid_spec), FlowDiffusion(disp_spec)
    v_grid, v_disp = grid_model.to_volume(flow, occ), disp_model.to_volume(flow, occ)
    # The paper's volume is the absolute grid; the displacement volume is the scaled motion alone.
    assert torch.allclose(v_grid[:, :2].permute(0, 2, 3, 4, 1), flow)
    assert torch.allclose(v_disp[:, :2].permute(0, 2, 3, 4, 1), (flow - identity) * 8.0, atol=1e-6)
    assert torch.equal(v_grid[:, 2], v_disp[:, 2])
    for model, vol in ((grid_model, v_grid), (disp_model, v_disp)):
        f, o = model.from_volume(vol)
        assert torch.allclose(f, flow, atol=1e-6) and torch.allclose(o, occ, atol=1e-6)
