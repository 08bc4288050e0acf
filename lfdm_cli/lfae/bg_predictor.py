"""Background motion predictor: one global 3x3 transform from the source to the driving frame.

An encoder over the channel-concatenated pair, a spatial mean, and a linear head initialised to the
identity, so training starts from a static background.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lfdm_cli.lfae.config import BGPredictorConfig
from lfdm_cli.lfae.layers import HourglassEncoder

# Head size and identity initialisation per background model.
_HEADS = {
    "shift": [0.0, 0.0],
    "affine": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    "perspective": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
}


class BackgroundMotionPredictor(nn.Module):
    def __init__(self, config: BGPredictorConfig, num_channels: int):
        super().__init__()
        self.bg_type = config.bg_type
        if self.bg_type == "zero":
            self.encoder = None
            self.head = None
            return
        self.encoder = HourglassEncoder(2 * num_channels, config.block_expansion, config.num_blocks,
                                        config.max_features)
        identity = torch.tensor(_HEADS[self.bg_type])
        self.head = nn.Linear(self.encoder.out_channels, identity.numel())
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(identity)

    def forward(self, source: Tensor, driving: Tensor) -> Tensor:
        """(B, 3, 3) transform mapping driving-frame coordinates to source-frame coordinates."""
        bs = source.shape[0]
        eye = torch.eye(3, dtype=source.dtype, device=source.device).expand(bs, 3, 3)
        if self.encoder is None:
            return eye.clone()
        pooled = self.encoder(torch.cat([source, driving], dim=1))[-1].mean(dim=(2, 3))
        p = self.head(pooled).to(source.dtype)
        if self.bg_type == "shift":
            top = torch.cat([eye[:, :2, :2], p.view(bs, 2, 1)], dim=2)
            return torch.cat([top, eye[:, 2:]], dim=1)
        if self.bg_type == "affine":
            return torch.cat([p.view(bs, 2, 3), eye[:, 2:]], dim=1)
        bottom = torch.cat([p[:, 6:].view(bs, 1, 2), eye[:, 2:, 2:]], dim=2)
        return torch.cat([p[:, :6].view(bs, 2, 3), bottom], dim=1)
