"""Per-frame fidelity: L1, PSNR and SSIM, batched in torch.

Images are float tensors (..., C, H, W) with values in [0, 1]; every function returns one value
per image (the leading dimensions), so a (B, T, C, H, W) pair of videos gives (B, T) scores.
`to_unit_float` converts uint8 (..., H, W, C) arrays to that layout.

SSIM is Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
data range 1, statistics over the 'valid' part of the image only (no padding, as in the
authors' reference implementation), averaged over the map and the channels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def to_unit_float(x: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (..., H, W, C) (numpy or torch) -> float (..., C, H, W) in [0, 1]."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, copy=True))
    if t.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got {t.dtype}")
    if t.dim() < 3:
        raise ValueError(f"expected (..., H, W, C) frames, got shape {tuple(t.shape)}")
    return t.movedim(-1, -3).to(dtype) / 255.0


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() < 3:
        raise ValueError(f"expected (..., C, H, W) images, got shape {tuple(x.shape)}")


def l1_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per image."""
    _check_pair(x, y)
    return (x - y).abs().flatten(-3).mean(-1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, max_db: float | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image.

    Identical images have zero error and PSNR +inf; pass `max_db` (e.g. 100) to cap it when the
    values are averaged.
    """
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(-3).mean(-1)
    value = 10.0 * torch.log10(data_range ** 2 / mse)  # mse == 0 gives +inf
    if max_db is not None:
        value = value.clamp(max=max_db)
    return value.to(x.dtype if x.is_floating_point() else torch.float64)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # Separable Gaussian: one row pass and one column pass, each channel on its own.
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image (1 for identical images); see the module docstring."""
    _check_pair(x, y)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got "
                         f"{x.shape[-2]}x{x.shape[-1]}")
    lead = x.shape[:-3]
    xf = x.reshape(-1, *x.shape[-3:]).to(torch.float64)
    yf = y.reshape(-1, *y.shape[-3:]).to(torch.float64)
    g = gaussian_window(dtype=torch.float64).to(xf.device)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _blur_valid(xf, g), _blur_valid(yf, g)
    sxx = _blur_valid(xf * xf, g) - mu_x ** 2
    syy = _blur_valid(yf * yf, g) - mu_y ** 2
    sxy = _blur_valid(xf * yf, g) - mu_x * mu_y
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    value = smap.flatten(1).mean(-1).reshape(lead)
    return value.to(x.dtype if x.is_floating_point() else torch.float64)


def first_frame_ssim(video: Any, image: Any) -> float:
    """SSIM between frame 0 of a generated uint8 video (T, H, W, 3) and the uint8 input image
    (H, W, 3) it was generated from: how faithfully generation keeps the given first frame."""
    v = np.asarray(video)
    im = np.asarray(image)
    if v.ndim != 4:
        raise ValueError(f"expected a (T, H, W, 3) video, got shape {v.shape}")
    if v.shape[1:] != im.shape:
        raise ValueError(f"frame size {v.shape[1:]} differs from the image's {im.shape}")
    return float(ssim(to_unit_float(v[0], torch.float64), to_unit_float(im, torch.float64)))


def video_frame_metrics(real: Any, fake: Any) -> dict[str, float]:
    """Mean L1, PSNR (identical frames capped at 100 dB) and SSIM over all frames of uint8
    videos (..., T, H, W, 3)."""
    x, y = to_unit_float(real, torch.float64), to_unit_float(fake, torch.float64)
    return {
        "l1": float(l1_error(x, y).mean()),
        "psnr": float(psnr(x, y, max_db=100.0).mean()),
        "ssim": float(ssim(x, y).mean()),
    }

