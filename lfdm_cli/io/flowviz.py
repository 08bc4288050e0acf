"""Pictures of LFDM's latent flows and occlusion maps.

Flows are coloured with the Middlebury colour wheel (Baker et al., "A Database and Evaluation
Methodology for Optical Flow", 2007): hue is the direction, saturation the magnitude, so flow
images look like those in the optical-flow literature. LFDM's flows are absolute sampling grids
for `grid_sample` rather than displacements; `grid_to_displacement` converts them first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lfdm_cli.io.image import as_numpy, is_tensor

# Hue segments of the wheel, in order, with the number of colours in each:
# red->yellow, yellow->green, green->cyan, cyan->blue, blue->magenta, magenta->red.
WHEEL_SEGMENTS = (("RY", 15), ("YG", 6), ("GC", 4), ("CB", 11), ("BM", 13), ("MR", 6))


def middlebury_colorwheel() -> np.ndarray:
    """The 55 wheel colours as uint8 (55, 3).

    In each segment one channel ramps linearly (floor(255 * i / n)) while the others stay at
    0 or 255, walking the hue circle from red through yellow, green, cyan, blue and magenta.
    """
    # (channel that ramps, ramp goes up?, channel held at 255) for each segment
    ramps = {"RY": (1, True, 0), "YG": (0, False, 1), "GC": (2, True, 1),
             "CB": (1, False, 2), "BM": (0, True, 2), "MR": (2, False, 0)}
    rows = []
    for name, n in WHEEL_SEGMENTS:
        channel, up, full = ramps[name]
        ramp = np.floor(255 * np.arange(n) / n)
        seg = np.zeros((n, 3))
        seg[:, full] = 255
        seg[:, channel] = ramp if up else 255 - ramp
        rows.append(seg)
    return np.concatenate(rows).astype(np.uint8)


_MIN_SCALE = 1e-3  # pixels; smaller motions are float noise

_WHEEL = middlebury_colorwheel().astype(np.float32) / 255.0


def flow_to_color(flow: Any, max_flow: float | None = None) -> np.ndarray:
    """Colour a displacement field (..., H, W, 2) in (dx, dy) pixels as uint8 (..., H, W, 3).

    Magnitudes are divided by `max_flow`, or by the largest magnitude in the whole array (all
    leading dims together, so the frames of a flow video share one scale). Within the unit disc
    colours fade to white at zero motion (motion under 0.001 px counts as zero); beyond it (only
    possible with `max_flow`) they are darkened to 75%. +x (rightward) motion at full magnitude is the wheel's first colour, pure
    red. Non-finite vectors are drawn black, as Middlebury draws unknown flow.
    """
    f = as_numpy(flow).astype(np.float32)
    if f.ndim < 3 or f.shape[-1] != 2:
        raise ValueError(f"flow must be shaped (..., H, W, 2), got {f.shape}")
    unknown = ~np.isfinite(f).all(axis=-1)
    f = np.where(unknown[..., None], 0.0, f)
    u, v = f[..., 0], f[..., 1]
    radius = np.sqrt(u * u + v * v)
    # Float noise (an identity grid converts to ~1e-7 px) is no motion: it is drawn white and
    # never stretched to full colour by the normalisation.
    still = radius < _MIN_SCALE
    u, v, radius = (np.where(still, 0.0, a) for a in (u, v, radius))
    if max_flow is not None:
        if not max_flow > 0:
            raise ValueError(f"max_flow must be positive, got {max_flow}")
        scale = float(max_flow)
    else:
        scale = max(float(radius.max(initial=0.0)), _MIN_SCALE)
    u, v, radius = u / scale, v / scale, radius / scale
    # +0.0 turns -0.0 into +0.0, so a flow of exactly (dx, 0) always lands on the red end of the
    # wheel's seam instead of flipping to magenta-red with the sign of a zero.
    angle = np.arctan2(-(v + 0.0), -(u + 0.0)) / np.pi
    n = len(_WHEEL)
    fk = (angle + 1.0) / 2.0 * (n - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = (k0 + 1) % n
    frac = (fk - k0)[..., None]
    color = (1.0 - frac) * _WHEEL[k0] + frac * _WHEEL[k1]
    inside = (radius <= 1.0)[..., None]
    color = np.where(inside, 1.0 - radius[..., None] * (1.0 - color), color * 0.75)
    out = np.floor(255.0 * color).astype(np.uint8)
    out[unknown] = 0
    return out


def grid_to_displacement(grid: Any) -> Any:
    """Absolute sampling grid (..., h, w, 2), (x, y) in [-1, 1], to displacements in pixels.

    Uses grid_sample's align_corners=False convention: the centre of column j is
    x = (2j + 1) / w - 1, so one pixel is 2 / w in grid units. The result says, for each output
    pixel, how far away (dx, dy) the pixel it samples lies; the identity grid gives zeros.
    Returns the same kind (numpy array or torch tensor, same device) as the input.
    """
    if grid.shape[-1] != 2 or len(grid.shape) < 3:
        raise ValueError(f"grid must be shaped (..., h, w, 2), got {tuple(grid.shape)}")
    h, w = grid.shape[-3], grid.shape[-2]
    if is_tensor(grid):
        import torch

        g = grid if grid.is_floating_point() else grid.float()
        xs = (2 * torch.arange(w, device=g.device, dtype=g.dtype) + 1) / w - 1
        ys = (2 * torch.arange(h, device=g.device, dtype=g.dtype) + 1) / h - 1
        dx = (g[..., 0] - xs) * (w / 2)
        dy = (g[..., 1] - ys[:, None]) * (h / 2)
        return torch.stack([dx, dy], dim=-1)
    g = np.asarray(grid, dtype=np.float32)
    xs = (2 * np.arange(w, dtype=np.float32) + 1) / w - 1
    ys = (2 * np.arange(h, dtype=np.float32) + 1) / h - 1
    dx = (g[..., 0] - xs) * (w / 2)
    dy = (g[..., 1] - ys[:, None]) * (h / 2)
    return np.stack([dx, dy], axis=-1)


def grid_to_color(grid: Any, max_flow: float | None = None) -> np.ndarray:
    """`flow_to_color` of an absolute sampling grid (see `grid_to_displacement`)."""
    return flow_to_color(grid_to_displacement(grid), max_flow=max_flow)


def occlusion_to_gray(occ: Any) -> np.ndarray:
    """Occlusion map (..., 1, h, w) or (..., h, w) to uint8 gray RGB (..., h, w, 3).

    Floats are taken in [0, 1] (LFDM's maps: 1 = visible, drawn white; 0 = occluded, black) and
    clipped; uint8 maps are used as they are. A size-1 third-from-last axis is read as the
    channel axis, so a (1, h, w) input gives (h, w, 3).
    """
    arr = as_numpy(occ)
    if arr.ndim < 2:
        raise ValueError(f"occlusion map must be at least 2-D (h, w), got shape {arr.shape}")
    if arr.ndim >= 3 and arr.shape[-3] == 1:
        arr = arr[..., 0, :, :]
    if arr.dtype != np.uint8:
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0)
        arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=-1))
