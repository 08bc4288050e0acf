"""Generator: encode the source, warp its features by the latent flow, decode the driving frame.

The encoder (7x7 stem, down blocks) gives the latent map z (the stage-two conditioning). Decoding
warps z by the flow and multiplies it by the occlusion map, runs the residual bottleneck, and on the
way up blends each warped encoder feature in by the occlusion map (`warped*occ + previous*(1-occ)`),
finishing with a blend against the warped source image. Flow and occlusion live at the flow
predictor's resolution and are resized bilinearly to each feature map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lfdm_cli.lfae.config import GeneratorConfig
from lfdm_cli.lfae.flow_predictor import FlowPredictor
from lfdm_cli.lfae.layers import ConvNormReLU, DownBlock, ResBlock, UpBlock, hourglass_width, resize_grid, warp


class FlowWarper:
    """Applies one flow/occlusion pair to feature maps of several sizes.

    Resized copies of the flow and occlusion are kept per size, so the encoder features, the
    previews and the final blend share them (the reference resizes them again for every use; the
    results are identical).
    """

    def __init__(self, flow: Tensor, occlusion: Tensor | None):
        self.flow = flow
        self.occlusion = occlusion
        self._flows: dict[tuple[int, int], Tensor] = {}
        self._occlusions: dict[tuple[int, int], Tensor] = {}

    def warp(self, x: Tensor) -> Tensor:
        size = (x.shape[2], x.shape[3])
        if size not in self._flows:
            self._flows[size] = resize_grid(self.flow, *size)
        return warp(x, self._flows[size].to(x.dtype))

    def occlusion_at(self, size: tuple[int, int]) -> Tensor | None:
        if self.occlusion is None:
            return None
        if size not in self._occlusions:
            occ = self.occlusion
            if occ.shape[2:] != size:
                occ = F.interpolate(occ, size=size, mode="bilinear", align_corners=False)
            self._occlusions[size] = occ
        return self._occlusions[size]

    def blend(self, warped: Tensor, previous: Tensor | None) -> Tensor:
        """Occlusion-weighted mix of an already warped feature with the decoder's running output.

        Without an occlusion map the warped feature replaces `previous`, as in the reference.
        """
        occ = self.occlusion_at((warped.shape[2], warped.shape[3]))
        if occ is None:
            return warped
        if previous is None:
            return warped * occ
        return warped * occ + previous * (1 - occ)


class Generator(nn.Module):
    def __init__(self, config: GeneratorConfig, num_regions: int, num_channels: int, revert_axis_swap: bool):
        super().__init__()
        self.config = config
        be, mf, n_down = config.block_expansion, config.max_features, config.num_down_blocks
        self.flow_predictor = FlowPredictor(config.pixelwise_flow_predictor, num_regions, num_channels,
                                            revert_axis_swap)
        self.stem = ConvNormReLU(num_channels, be, kernel_size=7, padding=3)
        self.down = nn.ModuleList(DownBlock(hourglass_width(be, mf, i), hourglass_width(be, mf, i + 1))
                                  for i in range(n_down))
        self.up = nn.ModuleList(UpBlock(hourglass_width(be, mf, n_down - i), hourglass_width(be, mf, n_down - i - 1))
                                for i in range(n_down))
        self.latent_channels = hourglass_width(be, mf, n_down)
        self.bottleneck = nn.Sequential(*(ResBlock(self.latent_channels) for _ in range(config.num_bottleneck_blocks)))
        self.to_rgb = nn.Conv2d(be, num_channels, kernel_size=7, padding=3)

    def encode(self, image: Tensor) -> list[Tensor]:
        """Encoder pyramid, finest first: [stem output, down block 1, ..., latent z]."""
        features = [self.stem(image)]
        for block in self.down:
            features.append(block(features[-1]))
        return features

    def decode(self, image: Tensor, features: list[Tensor], flow: Tensor, occlusion: Tensor | None
               ) -> dict[str, Tensor]:
        """Prediction (B, C, H, W) and the flow-warped source `deformed` (B, C, H, W).

        `image` and `features` are the source and its `encode` output, batch-aligned with `flow`
        (B, h, w, 2) and `occlusion` (B, 1, h, w).
        """
        warper = FlowWarper(flow, occlusion)
        deformed = warper.warp(image)
        warped_latent = warper.warp(features[-1])
        out = self.bottleneck(warper.blend(warped_latent, None))
        skips = self.config.skips
        for i, block in enumerate(self.up):
            if skips:
                # The deepest skip is z itself, already warped for the bottleneck.
                warped = warped_latent if i == 0 else warper.warp(features[-(i + 1)])
                out = warper.blend(warped, out)
            out = block(out)
        if skips:
            out = warper.blend(warper.warp(features[0]), out)
        out = torch.sigmoid(self.to_rgb(out))
        if skips:
            out = warper.blend(deformed.to(out.dtype), out)
        return {"prediction": out, "deformed": deformed}
