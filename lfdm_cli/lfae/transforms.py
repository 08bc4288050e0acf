"""Random transforms used while training stage one.

- `RandomTPS`: the random affine + thin-plate-spline warp of MRAA's equivariance losses. A frame
  warped by it must yield regions that map back onto the original frame's regions.
- `random_flip`, `color_jitter`, `augment_frames`: the reference's data augmentation, applied
  identically to all frames of a sample (a source/driving pair, or a clip).

Every random number comes from an explicitly passed generator, so a sample is a function of the
seed that built the generator (see lfdm_cli.training.sampler).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch import Tensor

from lfdm_cli.lfae.config import AugmentationConfig, TransformConfig
from lfdm_cli.lfae.layers import coordinate_grid

# Added inside the TPS kernel's log so that a coordinate on a control point gives 0, not NaN.
_TPS_LOG_EPS = 1e-6


@dataclass
class RandomTPS:
    """x -> theta[:, :2] x + theta[:, 2] + sum_k w_k * r_k^2 log(r_k + 1e-6), per sample.

    theta is the identity 2x3 affine plus N(0, sigma_affine) noise; the control points form a
    points_tps x points_tps grid over [-1, 1]^2 with weights w ~ N(0, sigma_tps); r_k is the L1
    distance to control point k. As in MRAA, the TPS term is one scalar added to both x and y.
    """

    theta: Tensor            # (B, 2, 3)
    control_points: Tensor   # (P, 2)
    control_params: Tensor   # (B, 1, P)

    @classmethod
    def sample(cls, batch: int, params: TransformConfig, generator: torch.Generator | None = None,
               rows: slice | None = None, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> "RandomTPS":
        """Draw `batch` transforms; keep `rows` of them (a process's share of a global batch)."""
        n = params.points_tps
        noise = torch.randn(batch, 2, 3, generator=generator, dtype=torch.float32) * params.sigma_affine
        theta = noise + torch.eye(2, 3).view(1, 2, 3)
        weights = torch.randn(batch, 1, n * n, generator=generator, dtype=torch.float32) * params.sigma_tps
        if rows is not None:
            theta, weights = theta[rows], weights[rows]
        points = coordinate_grid(n, n).reshape(-1, 2)
        return cls(theta=theta.to(device, dtype), control_points=points.to(device, dtype),
                   control_params=weights.to(device, dtype))

    @property
    def batch(self) -> int:
        return self.theta.shape[0]

    def warp_coordinates(self, coords: Tensor) -> Tensor:
        """Map points (B or 1, N, 2) in [-1, 1] through each sample's transform -> (B, N, 2)."""
        theta = self.theta.to(coords.dtype).unsqueeze(1)                        # (B, 1, 2, 3)
        out = torch.matmul(theta[..., :2], coords.unsqueeze(-1)) + theta[..., 2:]
        out = out.squeeze(-1)
        r = self._distances(coords)                                             # (B|1, N, P)
        tps = (r ** 2 * torch.log(r + _TPS_LOG_EPS) * self.control_params.to(coords.dtype)).sum(dim=2)
        return out + tps.view(self.batch, coords.shape[1], 1)

    def jacobian(self, coords: Tensor) -> Tensor:
        """d warp / d coords at points (B, N, 2) -> (B, N, 2, 2), rows = output (x', y').

        Closed form of what MRAA obtains with autograd; differentiable in `coords`, so the affine
        equivariance loss trains the region predictor through it.
        """
        theta = self.theta.to(coords.dtype)
        jac = theta[:, None, :, :2].expand(self.batch, coords.shape[1], 2, 2)
        diff = coords.view(coords.shape[0], -1, 1, 2) - self.control_points.to(coords.dtype).view(1, 1, -1, 2)
        r = diff.abs().sum(-1, keepdim=True)                                    # (B, N, P, 1)
        dkernel = 2 * r * torch.log(r + _TPS_LOG_EPS) + r ** 2 / (r + _TPS_LOG_EPS)
        w = self.control_params.to(coords.dtype).view(self.batch, 1, -1, 1)
        grad = (w * dkernel * torch.sign(diff)).sum(dim=2)                      # (B, N, 2)
        return jac + grad.unsqueeze(-2)                                         # same term on both rows

    def transform_frame(self, frame: Tensor) -> Tensor:
        """Warp frames (B, C, H, W) with reflection padding."""
        h, w = frame.shape[2:]
        grid = coordinate_grid(h, w, dtype=frame.dtype, device=frame.device).reshape(1, h * w, 2)
        grid = self.warp_coordinates(grid).view(self.batch, h, w, 2)
        return F.grid_sample(frame, grid, padding_mode="reflection", align_corners=False)

    def _distances(self, coords: Tensor) -> Tensor:
        diff = coords.view(coords.shape[0], -1, 1, 2) - self.control_points.to(coords.dtype).view(1, 1, -1, 2)
        return diff.abs().sum(-1)


# ----------------------------------------------------------------------------- augmentation

def random_flip(frames: np.ndarray, rng: np.random.Generator, time_flip: bool, horizontal_flip: bool) -> np.ndarray:
    """The reference's RandomFlip on (T, H, W, C): a time flip (p=1/2) excludes the horizontal
    flip; otherwise a horizontal flip with p=1/2."""
    if time_flip and rng.random() < 0.5:
        return frames[::-1]
    if horizontal_flip and rng.random() < 0.5:
        return frames[:, :, ::-1]
    return frames


def adjust_hue(im: Image.Image, factor: float) -> Image.Image:
    # As torchvision does for PIL images: shift the uint8 hue channel with wrap-around.
    h, s, v = im.convert("HSV").split()
    shift = int(factor * 255)  # truncated toward zero, as the int8 cast torchvision uses
    hue = ((np.asarray(h, dtype=np.int16) + shift) % 256).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")


def color_jitter(frames: np.ndarray, rng: np.random.Generator, brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, hue: float = 0.0) -> np.ndarray:
    """The reference's ColorJitter on uint8 (T, H, W, 3): one set of factors for all frames.

    Brightness/contrast/saturation factors are uniform in [max(0, 1-x), 1+x], the hue shift in
    [-hue, hue]; the enabled adjustments run in a random order, each as PIL computes it
    (the reference goes through torchvision's PIL functions).
    """
    ops = []
    if brightness > 0:
        f = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
        ops.append(lambda im, f=f: ImageEnhance.Brightness(im).enhance(f))
    if contrast > 0:
        f = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
        ops.append(lambda im, f=f: ImageEnhance.Contrast(im).enhance(f))
    if saturation > 0:
        f = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
        ops.append(lambda im, f=f: ImageEnhance.Color(im).enhance(f))
    if hue > 0:
        f = rng.uniform(-hue, hue)
        ops.append(lambda im, f=f: adjust_hue(im, f))
    if not ops:
        return frames
    order = rng.permutation(len(ops))
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        im = Image.fromarray(np.ascontiguousarray(frame), "RGB")
        for i in order:
            im = ops[i](im)
        out[t] = np.asarray(im)
    return out


def augment_frames(frames: np.ndarray, rng: np.random.Generator, config: AugmentationConfig) -> np.ndarray:
    """Flip, then colour jitter, as the reference's AllAugmentationTransform; uint8 in and out."""
    frames = random_flip(frames, rng, config.time_flip, config.horizontal_flip)
    return color_jitter(frames, rng, config.brightness, config.contrast, config.saturation, config.hue)
