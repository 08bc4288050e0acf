"""L1, PSNR, SSIM and first-frame SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lfdm_cli.metrics.frame_metrics import (
    first_frame_ssim,
    gaussian_window,
    l1_error,
    psnr,
    ssim,
    to_unit_float,
    video_frame_metrics,
)


def images(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random(shape))


def naive_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. SSIM, window by window (valid positions only), for one (C, H, W) pair."""
    g = gaussian_window().numpy()
    w = np.outer(g, g)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                a, b = x[c, i:i + 11, j:j + 11], y[c, i:i + 11, j:j + 11]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * a * a).sum() - ma ** 2, (w * b * b).sum() - mb ** 2
                cov = (w * a * b).sum() - ma * mb
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_identical_images_give_ssim_one_psnr_inf_l1_zero():
    x = images((2, 3, 3, 24, 20))
    assert torch.allclose(ssim(x, x), torch.ones(2, 3, dtype=x.dtype), atol=1e-12)
    assert torch.isinf(psnr(x, x)).all()
    assert (psnr(x, x, max_db=100.0) == 100.0).all()
    assert (l1_error(x, x) == 0).all()


def test_ssim_matches_window_by_window_definition_and_is_symmetric():
    x = images((3, 16, 18), seed=1)
    y = (x + 0.1 * images((3, 16, 18), seed=2)).clamp(0, 1)
    value = float(ssim(x, y))
    assert value == pytest.approx(naive_ssim(x.numpy(), y.numpy()), abs=1e-10)
    assert float(ssim(y, x)) == pytest.approx(value, abs=1e-12)
    assert 0 < value < 1


def test_more_noise_lowers_ssim_and_psnr():
    x = images((1, 3, 32, 32), seed=3)
    noise = images((1, 3, 32, 32), seed=4) - 0.5
    mild, strong = (x + 0.05 * noise).clamp(0, 1), (x + 0.3 * noise).clamp(0, 1)
    assert ssim(x, mild) > ssim(x, strong)
    assert psnr(x, mild) > psnr(x, strong)


def test_psnr_and_l1_known_values():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    y = torch.full_like(x, 0.1)
    assert float(l1_error(x, y)) == pytest.approx(0.1)
    assert float(psnr(x, y)) == pytest.approx(10 * math.log10(1 / 0.01))


def test_first_frame_ssim_and_uint8_helpers():
    rng = np.random.default_rng(5)
    video = rng.integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
    assert first_frame_ssim(video, video[0]) == pytest.approx(1.0, abs=1e-12)
    assert first_frame_ssim(video, video[1]) < 0.5
    assert tuple(to_unit_float(video).shape) == (4, 3, 20, 20)
    m = video_frame_metrics(video, video)
    assert m["l1"] == 0 and m["psnr"] == 100.0 and m["ssim"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))
