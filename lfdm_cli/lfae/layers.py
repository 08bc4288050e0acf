"""Building blocks shared by the stage-one networks.

Everything here computes exactly what the MRAA/LFDM reference computes, in the same operation
order, so that a converted reference checkpoint reproduces the reference's float32 outputs
bitwise on CPU. Where a simpler formulation would round differently, the reference's order wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def coordinate_grid(height: int, width: int, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """(height, width, 2) grid of (x, y) in [-1, 1], x along the width.

    Spacing is 2*i/(n-1) - 1 (the end points are pixel centres, as with align_corners=True),
    while the flows built on it are consumed by grid_sample with align_corners=False; the
    reference mixes the two conventions and trained weights depend on it.
    """
    x = torch.arange(width, dtype=dtype, device=device)
    y = torch.arange(height, dtype=dtype, device=device)
    x = 2 * (x / (width - 1)) - 1
    y = 2 * (y / (height - 1)) - 1
    xx = x.view(1, -1).expand(height, width)
    yy = y.view(-1, 1).expand(height, width)
    return torch.stack([xx, yy], dim=-1)


def to_homogeneous(points: Tensor) -> Tensor:
    return torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)


def from_homogeneous(points: Tensor) -> Tensor:
    return points[..., :2] / points[..., 2:3]


def gaussian_kernel_2d(sigma: float, size: int) -> Tensor:
    """Normalised (size, size) Gaussian; the two 1D factors multiply in the reference's order."""
    t = torch.arange(size, dtype=torch.float32)
    mean = (size - 1) / 2
    g = torch.exp(-(t - mean) ** 2 / (2 * sigma ** 2))
    kernel = g.view(-1, 1) * g.view(1, -1)
    return kernel / torch.sum(kernel)


class AntiAliasDownsample(nn.Module):
    """Gaussian blur then stride: band-limited downsampling by `scale` (e.g. 0.25 -> 1/4 size).

    The kernel is a persistent buffer, as in the reference checkpoints.
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.scale = scale
        sigma = (1 / scale - 1) / 2
        size = 2 * round(sigma * 4) + 1
        self.pad_before = size // 2
        self.pad_after = self.pad_before - 1 if size % 2 == 0 else self.pad_before
        self.stride = int(1 / scale)
        self.channels = channels
        kernel = gaussian_kernel_2d(sigma, size)
        self.register_buffer("kernel", kernel.view(1, 1, size, size).repeat(channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.scale == 1.0:
            return x
        a, b = self.pad_before, self.pad_after
        out = F.conv2d(F.pad(x, (a, b, a, b)), weight=self.kernel, groups=self.channels)
        return out[:, :, ::self.stride, ::self.stride]


class ConvNormReLU(nn.Module):
    """Convolution, batch norm, ReLU at the same resolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_channels, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)))


class DownBlock(ConvNormReLU):
    """ConvNormReLU followed by 2x2 average pooling."""

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(super().forward(x), kernel_size=2)


class UpBlock(ConvNormReLU):
    """Nearest-neighbour 2x upsampling followed by ConvNormReLU."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.interpolate(x, scale_factor=2))


class ResBlock(nn.Module):
    """Pre-activation residual block (norm, ReLU, conv, twice) at constant width."""

    def __init__(self, channels: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm2d(channels, affine=True)
        self.norm2 = nn.BatchNorm2d(channels, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


def hourglass_width(block_expansion: int, max_features: int, level: int) -> int:
    """Channels after `level` down blocks of an hourglass (level 0 = its first block's input)."""
    return min(max_features, block_expansion * (2 ** level))


class HourglassEncoder(nn.Module):
    """`num_blocks` DownBlocks; returns the input and every block's output (finest first)."""

    def __init__(self, in_channels: int, block_expansion: int, num_blocks: int, max_features: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            DownBlock(in_channels if i == 0 else hourglass_width(block_expansion, max_features, i),
                      hourglass_width(block_expansion, max_features, i + 1))
            for i in range(num_blocks))
        self.out_channels = hourglass_width(block_expansion, max_features, num_blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = [x]
        for block in self.blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    """UpBlocks that concatenate the matching encoder output after each upsampling."""

    def __init__(self, in_channels: int, block_expansion: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for level in reversed(range(num_blocks)):
            # Every block but the deepest also receives the skip concatenated by the block before.
            factor = 1 if level == num_blocks - 1 else 2
            blocks.append(UpBlock(factor * hourglass_width(block_expansion, max_features, level + 1),
                                  hourglass_width(block_expansion, max_features, level)))
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = block_expansion + in_channels

    def forward(self, features: list[Tensor]) -> Tensor:
        out = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            out = torch.cat([block(out), skip], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net style encoder/decoder; output has `block_expansion + in_channels` channels."""

    def __init__(self, in_channels: int, block_expansion: int, num_blocks: int, max_features: int):
        super().__init__()
        self.encoder = HourglassEncoder(in_channels, block_expansion, num_blocks, max_features)
        self.decoder = HourglassDecoder(in_channels, block_expansion, num_blocks, max_features)
        self.out_channels = self.decoder.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def resize_grid(grid: Tensor, height: int, width: int) -> Tensor:
    """Bilinearly resize a (B, h, w, 2) sampling grid to (B, height, width, 2)."""
    if grid.shape[1] == height and grid.shape[2] == width:
        return grid
    grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False)
    return grid.permute(0, 2, 3, 1)


def warp(x: Tensor, grid: Tensor) -> Tensor:
    """Backward warp: sample `x` at the absolute (x, y) positions of `grid` (zeros outside)."""
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
