"""Samplers on a problem with a known answer, determinism, and guidance call counts.

Toy problem: data x0 ~ N(mu, s^2) per dimension. Under the diffusion x_t = a x0 + sigma eps the
exact noise prediction is E[eps | x_t] = sigma (x_t - a mu) / (a^2 s^2 + sigma^2), and the
probability-flow ODE maps x_T to mu + s (x_T - a_T mu) / sqrt(a_T^2 s^2 + sigma_T^2) exactly, so
deterministic samplers can be checked sample by sample and stochastic ones by their moments.
"""

from __future__ import annotations

import pytest
import torch

from lfdm_cli.diffusion import samplers as S
from lfdm_cli.diffusion.guidance import GuidedDenoiser
from lfdm_cli.diffusion.schedule import DiffusionSchedule

MU = torch.tensor([0.3, -0.2, 0.0, 0.1])
STD = 0.2
N = 4000


@pytest.fixture(scope="module")
def schedule():
    return DiffusionSchedule(1000)


def exact_denoiser(schedule):
    acp = schedule.alphas_cumprod.double()
    calls = []

    def denoiser(x, t):
        calls.append(t)
        a = acp[t][:, None]
        var = a * STD ** 2 + (1 - a)
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * MU) / var).float()

    denoiser.calls = calls
    return denoiser


def ode_solution(schedule, x_T):
    a = schedule.alphas_cumprod.double()[-1]
    return MU + STD * (x_T.double() - a.sqrt() * MU) / (a * STD ** 2 + 1 - a).sqrt()


def noise(seed=0):
    return torch.randn(N, 4, generator=torch.Generator().manual_seed(seed))


def moments_error(x):
    return (x.mean(0) - MU).abs().max().item(), (x.std(0) - STD).abs().max().item()


def test_ddpm_matches_data_distribution(schedule):
    den = exact_denoiser(schedule)
    out = S.sample_ddpm(den, schedule, (N, 4), generator=torch.Generator().manual_seed(1), clip_denoised=False)
    assert len(den.calls) == 1000 and den.calls[0].tolist()[0] == 999 and den.calls[-1].tolist()[0] == 0
    mean_err, std_err = moments_error(out)
    assert mean_err < 0.015 and std_err < 0.012


@pytest.mark.parametrize("name, steps, tol", [("ddim", (10, 50, 200), 0.03), ("dpmpp", (5, 10, 20, 50), 0.015)])
def test_deterministic_samplers_converge_to_the_ode_solution(schedule, name, steps, tol):
    x_T = noise()
    exact = ode_solution(schedule, x_T)
    errors = []
    for n in steps:
        den = exact_denoiser(schedule)
        out = S.sample(name, den, schedule, (N, 4), steps=n, x_T=x_T, clip_denoised=False)
        assert len(den.calls) == n
        errors.append((out.double() - exact).abs().max().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < tol, errors
    mean_err, std_err = moments_error(out)
    assert mean_err < 0.015 and std_err < 0.02


def test_dpmpp_beats_ddim_at_equal_steps(schedule):
    x_T = noise()
    exact = ode_solution(schedule, x_T)
    for n in (10, 20):
        err = {name: (S.sample(name, exact_denoiser(schedule), schedule, (N, 4), steps=n, x_T=x_T,
                               clip_denoised=False).double() - exact).abs().max().item()
               for name in ("ddim", "dpmpp")}
        assert err["dpmpp"] < err["ddim"], err


def test_stochastic_ddim_converges(schedule):
    errs = []
    for n in (10, 200):
        out = S.sample_ddim(exact_denoiser(schedule), schedule, (N, 4), steps=n, eta=1.0,
                            generator=torch.Generator().manual_seed(3), clip_denoised=False)
        errs.append(moments_error(out))
    assert errs[1][1] < errs[0][1]
    assert errs[1][0] < 0.015 and errs[1][1] < 0.02


def test_ddim_eta0_uses_no_randomness(schedule):
    x_T = noise()
    state = torch.get_rng_state()
    g = torch.Generator().manual_seed(7)
    g_state = g.get_state()
    a = S.sample_ddim(exact_denoiser(schedule), schedule, (N, 4), steps=8, eta=0.0, x_T=x_T, generator=g)
    b = S.sample_ddim(exact_denoiser(schedule), schedule, (N, 4), steps=8, eta=0.0, x_T=x_T)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(g.get_state(), g_state)
    for spacing in ("trailing", "reference"):
        c = S.sample_ddim(exact_denoiser(schedule), schedule, (N, 4), steps=8, eta=0.0, x_T=x_T, spacing=spacing)
        assert torch.equal(torch.get_rng_state(), state) and torch.isfinite(c).all()
    S.sample_dpmpp_2m(exact_denoiser(schedule), schedule, (N, 4), steps=8, x_T=x_T)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp"])
def test_seeded_generator_determinism(name):
    schedule = DiffusionSchedule(50)  # short schedule: ddpm runs every step
    run = lambda seed: S.sample(name, exact_denoiser(schedule), schedule, (64, 4), steps=6, eta=1.0,
                                generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(0)
    a = run(11)
    torch.manual_seed(999)  # the global RNG plays no part
    b = run(11)
    c = run(12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_timestep_spacings():
    assert S.ddim_timesteps(1000, 4, "reference") == [(800, 600), (600, 400), (400, 200), (200, 0)]
    trailing = S.ddim_timesteps(1000, 10, "trailing")
    assert trailing[0][0] == 999 and trailing[-1][1] is None and len(trailing) == 10
    times = [p[0] for p in trailing]
    assert times == sorted(times, reverse=True) and len(set(times)) == 10
    with pytest.raises(ValueError):
        S.ddim_timesteps(1000, 0)
    with pytest.raises(ValueError):
        S.ddim_timesteps(1000, 5, "leading")
    with pytest.raises(ValueError):
        S.sample("euler", exact_denoiser(DiffusionSchedule(10)), DiffusionSchedule(10), (2, 4), steps=2)


def test_thresholding_keeps_samples_in_range(schedule):
    out = S.sample_ddim(exact_denoiser(schedule), schedule, (N, 4), steps=10, x_T=noise() * 3)
    assert out.abs().max() <= 1.0 + 1e-6


# ---------------------------------------------------------------------------------------------
# Guidance


class CountingNet:
    """Stands in for the U-Net: eps = x * 0.1 + cond mean, records every call's batch size."""

    def __init__(self):
        self.batches = []
        self.null = torch.full((1, 3), -1.0)

    def __call__(self, x, t, cond=None, null_mask=None, *, latent=None):
        self.batches.append(x.shape[0])
        if cond is None:
            cond = self.null.expand(x.shape[0], -1)
        elif null_mask is not None:
            cond = torch.where(null_mask[:, None], self.null, cond)
        return x * 0.1 + cond.mean(dim=1).reshape(-1, 1, 1, 1, 1) + latent.mean()

    def null_embedding(self, batch):
        return self.null.expand(batch, -1)

    def project_latent(self, fea):
        return fea.mean(dim=1, keepdim=True).unsqueeze(2)


@pytest.mark.parametrize("scale", [1.0, 0.0, 2.5])
def test_guidance_passes(schedule, scale):
    net = CountingNet()
    b = 3
    fea = torch.randn(b, 5, 4, 4)
    cond = torch.randn(b, 3)
    den = GuidedDenoiser(net, fea, cond, scale)
    S.sample_ddim(den, schedule, (b, 3, 2, 4, 4), steps=7, generator=torch.Generator().manual_seed(0))
    assert len(net.batches) == 7 == den.calls
    assert set(net.batches) == ({2 * b} if scale not in (0.0, 1.0) else {b})


def test_guidance_combination():
    net = CountingNet()
    x = torch.randn(2, 3, 2, 4, 4)
    t = torch.tensor([5, 9])
    fea = torch.randn(2, 5, 4, 4)
    cond = torch.randn(2, 3)
    latent = net.project_latent(fea)
    eps_cond = net(x, t, cond, latent=latent)
    eps_null = net(x, t, None, latent=latent)
    out = GuidedDenoiser(net, fea, cond, 3.0)(x, t)
    assert torch.allclose(out, eps_null + (eps_cond - eps_null) * 3.0, atol=1e-6)
    # A null-masked sample is unconditional in both halves: guidance leaves it unchanged.
    masked = GuidedDenoiser(net, fea, cond, 3.0, null_mask=torch.tensor([False, True]))(x, t)
    assert torch.allclose(masked[1], eps_null[1], atol=1e-6)


def test_guided_denoiser_max_batch_splits_rows_and_keeps_their_inputs():
    """`max_batch` runs the network on slices of rows; each row keeps its own x, t, condition,
    null flag and latent, with and without guidance."""
    class RowNet:
        def __init__(self):
            self.batches = []

        def null_embedding(self, b):
            return torch.full((b, 2), -1.0)

        def project_latent(self, fea):
            return fea[:, :1, None] * 10

        def __call__(self, x, t, cond=None, null_mask=None, *, latent=None):
            self.batches.append(x.shape[0])
            c = torch.full((x.shape[0], 2), -1.0) if cond is None else cond
            if null_mask is not None:
                c = torch.where(null_mask[:, None], torch.full_like(c, -1.0), c)
            return x + t.view(-1, 1, 1, 1, 1) + c[:, :1, None, None, None] + latent.mean((1, 2, 3, 4), keepdim=True)

    x = torch.randn(5, 3, 2, 4, 4)
    t = torch.arange(5) * 100
    fea = torch.randn(5, 4, 4, 4)
    cond = torch.randn(5, 2)
    null = torch.tensor([False, True, False, False, True])
    for scale in (1.0, 0.0, 2.5):
        whole_net, split_net = RowNet(), RowNet()
        whole = GuidedDenoiser(whole_net, fea, cond, scale, null)(x, t)
        split = GuidedDenoiser(split_net, fea, cond, scale, null, max_batch=2)(x, t)
        torch.testing.assert_close(split, whole, rtol=0, atol=1e-6)
        rows = 10 if scale not in (0.0, 1.0) else 5
        assert whole_net.batches == [rows]
        assert split_net.batches == [2] * (rows // 2) + [rows % 2] * (rows % 2)
    with pytest.raises(ValueError):
        GuidedDenoiser(RowNet(), fea, cond, 1.0, max_batch=0)
