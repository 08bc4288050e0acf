"""Region predictor: K soft regions of a frame and their affine frames (MRAA).

Each region is a spatial softmax over the logits of an hourglass run at 1/4 resolution. Its shift is
the heatmap-weighted mean of the coordinate grid, its covariance the weighted second moment around
that mean, and its affine the PCA square root U*sqrt(S) of the covariance.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lfdm_cli.lfae.config import RegionPredictorConfig
from lfdm_cli.lfae.layers import AntiAliasDownsample, Hourglass, coordinate_grid


@dataclass
class RegionParams:
    """What the region predictor says about a batch of frames (K regions each).

    shift (B,K,2) region centres as (x, y) in [-1, 1]; heatmap (B,K,h,w) the softmax regions;
    covar (B,K,2,2) and affine (B,K,2,2) when the configuration estimates them; u and d (B,K,2,2)
    the SVD factors behind a PCA affine (affine = u @ d); `intermediates` holds the downsampled
    input and the region logits when asked for.
    """

    shift: Tensor
    heatmap: Tensor
    covar: Tensor | None = None
    affine: Tensor | None = None
    u: Tensor | None = None
    d: Tensor | None = None
    intermediates: dict[str, Tensor] | None = None

    def index_select(self, index: Tensor) -> RegionParams:
        """Rows `index` of every tensor (used to pair one source with many driving frames)."""
        changes = {f.name: getattr(self, f.name).index_select(0, index)
                   for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, intermediates=None, **changes)


def covariance_sqrt(covar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """U, diag(sqrt(S)) and U @ diag(sqrt(S)) of a batch of 2x2 covariances (shape (..., 2, 2)).

    Always decomposed on the CPU, as the reference does even for CUDA runs: the singular vectors'
    signs then match the authors' and the published checkpoints, which learned with them.
    """
    shape = covar.shape
    flat = covar.reshape(-1, 2, 2)
    u, s, _ = torch.linalg.svd(flat.cpu(), full_matrices=False)
    u, s = u.to(covar.device), s.to(covar.device)
    d = torch.diag_embed(s ** 0.5)
    return u.view(shape), d.view(shape), torch.matmul(u, d).view(shape)


class RegionPredictor(nn.Module):
    def __init__(self, config: RegionPredictorConfig, num_regions: int, num_channels: int,
                 estimate_affine: bool):
        super().__init__()
        self.config = config
        self.num_regions = num_regions
        self.downsample = AntiAliasDownsample(num_channels, config.scale_factor)
        self.hourglass = Hourglass(num_channels, config.block_expansion, config.num_blocks, config.max_features)
        self.region_head = nn.Conv2d(self.hourglass.out_channels, num_regions, kernel_size=7, padding=config.pad)
        # Without PCA the affine is regressed per pixel and pooled by the heatmap (FOMM-style).
        self.regress_affine = estimate_affine and not config.pca_based
        if self.regress_affine:
            self.jacobian_head = nn.Conv2d(self.hourglass.out_channels, 4, kernel_size=7, padding=config.pad)
            nn.init.zeros_(self.jacobian_head.weight)
            with torch.no_grad():
                self.jacobian_head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]))
        else:
            self.jacobian_head = None

    def forward(self, image: Tensor, *, return_intermediates: bool = False) -> RegionParams:
        x = self.downsample(image)
        features = self.hourglass(x)
        logits = self.region_head(features)
        b, k, h, w = logits.shape
        # Region statistics in float32 even under autocast: covariances feed an SVD and inverses.
        with torch.autocast(device_type=image.device.type, enabled=False):
            heatmap = F.softmax(logits.float().view(b, k, -1) / self.config.temperature, dim=2).view(b, k, h, w)
            params = self._region_statistics(heatmap)
            if self.jacobian_head is not None:
                jacobian_map = self.jacobian_head(features.float()).reshape(b, 1, 4, h, w)
                jacobian = (heatmap.unsqueeze(2) * jacobian_map).view(b, k, 4, -1).sum(dim=-1).view(b, k, 2, 2)
                params.affine = jacobian
                params.covar = torch.matmul(jacobian, jacobian.permute(0, 1, 3, 2))
            elif self.config.pca_based:
                params.u, params.d, params.affine = covariance_sqrt(params.covar)
        if return_intermediates:
            params.intermediates = {"down_image": x, "region_logits": logits}
        return params

    def _region_statistics(self, heatmap: Tensor) -> RegionParams:
        b, k, h, w = heatmap.shape
        weights = heatmap.unsqueeze(-1)
        grid = coordinate_grid(h, w, dtype=heatmap.dtype, device=heatmap.device).view(1, 1, h, w, 2)
        mean = (weights * grid).sum(dim=(2, 3))
        params = RegionParams(shift=mean, heatmap=heatmap)
        if self.config.pca_based:
            centred = grid - mean.view(b, k, 1, 1, 2)
            outer = torch.matmul(centred.unsqueeze(-1), centred.unsqueeze(-2))
            params.covar = (outer * weights.unsqueeze(-1)).sum(dim=(2, 3))
        return params
