"""Pixelwise flow predictor: the dense latent flow and occlusion map between two frames.

From the region parameters of a source and a driving frame it builds, at 1/4 resolution, K+1 sparse
backward motions (background transform plus one affine motion per region), warps the source by
each, and lets an hourglass choose per pixel (softmax mask) how to mix them into one dense flow. A
second head predicts the occlusion map. Both are the "latent flow" that stage two generates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lfdm_cli.lfae.config import PixelwiseFlowConfig
from lfdm_cli.lfae.layers import (AntiAliasDownsample, Hourglass, coordinate_grid, from_homogeneous,
                                  to_homogeneous, warp)
from lfdm_cli.lfae.region_predictor import RegionParams


def region_gaussians(shift: Tensor, covar: Tensor | float, height: int, width: int) -> Tensor:
    """(B, K, height, width) unnormalised Gaussians centred on each region's shift."""
    b, k = shift.shape[:2]
    grid = coordinate_grid(height, width, dtype=shift.dtype, device=shift.device)
    grid = grid.view(1, 1, height, width, 2).repeat(b, k, 1, 1, 1)
    centred = grid - shift.view(b, k, 1, 1, 2)
    if isinstance(covar, float):
        return torch.exp(-0.5 * (centred ** 2).sum(-1) / covar)
    precision = torch.inverse(covar).view(b, k, 1, 1, 2, 2)
    quad = torch.matmul(torch.matmul(centred.unsqueeze(-2), precision), centred.unsqueeze(-1))
    return torch.exp(-0.5 * quad.sum(dim=(-1, -2)))


class FlowPredictor(nn.Module):
    def __init__(self, config: PixelwiseFlowConfig, num_regions: int, num_channels: int, revert_axis_swap: bool):
        super().__init__()
        self.config = config
        self.num_regions = num_regions
        self.revert_axis_swap = revert_axis_swap
        per_motion = 1 + (num_channels if config.use_deformed_source else 0)
        self.hourglass = Hourglass((num_regions + 1) * per_motion, config.block_expansion, config.num_blocks,
                                   config.max_features)
        self.mask_head = nn.Conv2d(self.hourglass.out_channels, num_regions + 1, kernel_size=7, padding=3)
        self.occlusion_head = (nn.Conv2d(self.hourglass.out_channels, 1, kernel_size=7, padding=3)
                               if config.estimate_occlusion_map else None)
        self.downsample = AntiAliasDownsample(num_channels, config.scale_factor)

    def heatmap_representation(self, height: int, width: int, source: RegionParams,
                               driving: RegionParams) -> Tensor:
        """(B, K+1, 1, h, w): driving minus source region Gaussians, slot 0 (background) zero."""
        use_covar = self.config.use_covar_heatmap
        region_var = float(self.config.region_var)
        g_driving = region_gaussians(driving.shift, driving.covar if use_covar else region_var, height, width)
        g_source = region_gaussians(source.shift, source.covar if use_covar else region_var, height, width)
        heatmap = g_driving - g_source
        background = torch.zeros_like(heatmap[:, :1])
        return torch.cat([background, heatmap], dim=1).unsqueeze(2)

    def sparse_motions(self, height: int, width: int, source: RegionParams, driving: RegionParams,
                       bg_params: Tensor | None) -> Tensor:
        """(B, K+1, h, w, 2) backward sampling grids: slot 0 background, then one per region.

        Region k maps a driving-frame point z to A_s A_d^-1 (z - mu_d) + mu_s.
        """
        bs, k = driving.shift.shape[:2]
        identity = coordinate_grid(height, width, dtype=source.shift.dtype, device=source.shift.device)
        identity = identity.view(1, 1, height, width, 2)
        grid = identity - driving.shift.view(bs, k, 1, 1, 2)
        if driving.affine is not None:
            affine = torch.matmul(source.affine, torch.inverse(driving.affine))
            if self.revert_axis_swap:
                # SVD axes have arbitrary signs; flipping the whole matrix when its [0,0] entry is
                # negative undoes a 180-degree turn between the two frames' PCA axes.
                affine = affine * torch.sign(affine[:, :, 0:1, 0:1])
            affine = affine.view(bs, k, 1, 1, 2, 2).repeat(1, 1, height, width, 1, 1)
            grid = torch.matmul(affine, grid.unsqueeze(-1)).squeeze(-1)
        region_motions = grid + source.shift.view(bs, k, 1, 1, 2)

        background = identity.repeat(bs, 1, 1, 1, 1)
        if bg_params is not None:
            background = to_homogeneous(background)
            background = torch.matmul(bg_params.view(bs, 1, 1, 1, 3, 3), background.unsqueeze(-1)).squeeze(-1)
            background = from_homogeneous(background)
        return torch.cat([background, region_motions], dim=1)

    @staticmethod
    def deform_per_motion(image: Tensor, motions: Tensor) -> Tensor:
        """(B, K+1, C, h, w): the image warped by each sparse motion."""
        bs, m, h, w, _ = motions.shape
        repeated = image.unsqueeze(1).repeat(1, m, 1, 1, 1).view(bs * m, -1, h, w)
        return warp(repeated, motions.reshape(bs * m, h, w, 2)).view(bs, m, -1, h, w)

    def forward(self, source_image: Tensor, source: RegionParams, driving: RegionParams,
                bg_params: Tensor | None = None, *, return_intermediates: bool = False
                ) -> tuple[Tensor, Tensor | None, dict[str, Tensor] | None]:
        """Dense flow (B, h, w, 2), occlusion map (B, 1, h, w) or None, intermediates or None."""
        image = self.downsample(source_image)
        bs, _, h, w = image.shape
        with torch.autocast(device_type=image.device.type, enabled=False):
            heatmaps = self.heatmap_representation(h, w, source, driving)
            motions = self.sparse_motions(h, w, source, driving, bg_params)
            deformed = self.deform_per_motion(image.float(), motions)
        parts = torch.cat([heatmaps, deformed], dim=2) if self.config.use_deformed_source else heatmaps
        features = self.hourglass(parts.view(bs, -1, h, w))

        mask_logits = self.mask_head(features)
        with torch.autocast(device_type=image.device.type, enabled=False):
            mask = F.softmax(mask_logits.float(), dim=1).unsqueeze(2)
            flow = (motions.permute(0, 1, 4, 2, 3) * mask).sum(dim=1).permute(0, 2, 3, 1)
        occlusion_logits = occlusion = None
        if self.occlusion_head is not None:
            occlusion_logits = self.occlusion_head(features)
            occlusion = torch.sigmoid(occlusion_logits.float())
        intermediates = None
        if return_intermediates:
            intermediates = {"down_image": image, "heatmap_representation": heatmaps, "sparse_motion": motions,
                             "sparse_deformed": deformed, "mask_logits": mask_logits,
                             "occlusion_logits": occlusion_logits}
        return flow, occlusion, intermediates
