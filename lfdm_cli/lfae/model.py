"""The latent flow auto-encoder (LFAE): stage one of LFDM.

`LFAE` holds the three reference networks (region predictor, background motion predictor,
generator with its pixelwise flow predictor) and offers the entry points the rest of lfdm uses:

- `reconstruct(source, driving)`: the stage-one training forward (also `forward`).
- `flow_and_occlusion(source, driving)`: the latent flow targets for stage two, no decoder.
- `encode(source)` -> `SourceEncoding`: the source's feature pyramid, computed once; its `latent`
  is the stage-two conditioning z (B, C, H/4, W/4).
- `decode(encoding, flow, occlusion)`: frames from given latent flows, all frames of a source in
  one batched pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lfdm_cli.config.schema import from_dict, to_dict
from lfdm_cli.errors import UserError
from lfdm_cli.lfae.bg_predictor import BackgroundMotionPredictor
from lfdm_cli.lfae.config import LFAEModelConfig, scaled_side
from lfdm_cli.lfae.generator import Generator
from lfdm_cli.lfae.region_predictor import RegionParams, RegionPredictor
from lfdm_cli.modelfolder import ModelFolder

__all__ = ["LFAE", "RegionParams", "SourceEncoding", "lfae_meta", "load_lfae"]


@dataclass
class SourceEncoding:
    """A batch of source frames and their encoder pyramid (finest first, `latent` last)."""

    image: Tensor
    features: list[Tensor]

    @property
    def latent(self) -> Tensor:
        return self.features[-1]

    def __len__(self) -> int:
        return self.image.shape[0]


def _rows(t: Tensor, index: Tensor, single_source: bool) -> Tensor:
    """Rows `index` of t; for one source a broadcast view instead of copies."""
    if single_source:
        return t.expand(index.numel(), *t.shape[1:])
    return t.index_select(0, index)


class LFAE(nn.Module):
    def __init__(self, config: LFAEModelConfig, frame_size: int):
        super().__init__()
        config.check_frame_size(frame_size)
        self.config = config
        self.frame_size = frame_size
        self.region_predictor = RegionPredictor(config.region_predictor, config.num_regions, config.num_channels,
                                                config.estimate_affine)
        self.bg_predictor = BackgroundMotionPredictor(config.bg_predictor, config.num_channels)
        self.generator = Generator(config.generator, config.num_regions, config.num_channels,
                                   config.revert_axis_swap)

    # ---- shapes -------------------------------------------------------------------------------

    @property
    def flow_size(self) -> int:
        """Side of the latent flow and occlusion map (frame size times the flow scale factor)."""
        return scaled_side(self.frame_size, self.config.generator.pixelwise_flow_predictor.scale_factor)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latent z returned by `encode`."""
        side = self.frame_size // 2 ** self.config.generator.num_down_blocks
        return (self.generator.latent_channels, side, side)

    def _check_frames(self, x: Tensor, name: str, ndim: tuple[int, ...] = (4,)) -> None:
        c, size = self.config.num_channels, self.frame_size
        if x.dim() not in ndim or tuple(x.shape[-3:]) != (c, size, size):
            layouts = " or ".join({4: f"(B, {c}, {size}, {size})", 5: f"(B, F, {c}, {size}, {size})"}[n] for n in ndim)
            raise ValueError(f"{name} must have shape {layouts} for this model, got {tuple(x.shape)}")

    # ---- stage one ----------------------------------------------------------------------------

    def forward(self, source: Tensor, driving: Tensor) -> dict[str, Any]:
        return self.reconstruct(source, driving)

    def reconstruct(self, source: Tensor, driving: Tensor, *, return_intermediates: bool = False
                    ) -> dict[str, Any]:
        """Reconstruct `driving` (B, C, H, W) from `source` (B, C, H, W) in [0, 1].

        Returns prediction (B,C,H,W), deformed (source warped by the flow, B,C,H,W),
        optical_flow (B,h,w,2) absolute (x, y) sampling grid, occlusion_map (B,1,h,w) or None,
        latent (B,C_z,h_z,w_z: the source's z before warping), source_region_params and
        driving_region_params (RegionParams), bg_params (B,3,3); with `return_intermediates`
        also `intermediates` (dict of named tensors for debugging).
        """
        self._check_frames(source, "source")
        self._check_frames(driving, "driving")
        rp_source = self.region_predictor(source, return_intermediates=return_intermediates)
        rp_driving = self.region_predictor(driving, return_intermediates=return_intermediates)
        bg_params = self.bg_predictor(source, driving)
        features = self.generator.encode(source)
        flow, occlusion, pfp = self.generator.flow_predictor(source, rp_source, rp_driving, bg_params,
                                                             return_intermediates=return_intermediates)
        decoded = self.generator.decode(source, features, flow, occlusion)
        result: dict[str, Any] = {
            "prediction": decoded["prediction"],
            "deformed": decoded["deformed"],
            "optical_flow": flow,
            "occlusion_map": occlusion,
            "latent": features[-1],
            "source_region_params": rp_source,
            "driving_region_params": rp_driving,
            "bg_params": bg_params,
        }
        if return_intermediates:
            inter = {f"region_predictor/source/{k}": v for k, v in rp_source.intermediates.items()}
            inter.update({f"region_predictor/driving/{k}": v for k, v in rp_driving.intermediates.items()})
            inter.update({f"flow_predictor/{k}": v for k, v in pfp.items() if v is not None})
            result["intermediates"] = inter
        return result

    # ---- latent flows (stage two targets) -----------------------------------------------------

    def flow_and_occlusion(self, source: Tensor, driving: Tensor, *, chunk_size: int | None = None
                           ) -> tuple[Tensor, Tensor | None]:
        """Latent flow and occlusion from `source` to each driving frame.

        source (B,C,H,W); driving (B,C,H,W) -> flow (B,h,w,2), occlusion (B,1,h,w), or driving
        (B,F,C,H,W) -> flow (B,F,h,w,2), occlusion (B,F,1,h,w). The source's regions are predicted
        once; `chunk_size` bounds how many frames go through the networks at a time. Occlusion is
        None when the configuration does not estimate it.
        """
        self._check_frames(source, "source")
        self._check_frames(driving, "driving", ndim=(4, 5))
        per_frame = driving.dim() == 5
        b = source.shape[0]
        if driving.shape[0] != b:
            raise ValueError(f"driving has batch {driving.shape[0]} but source has {b}")
        frames = driving.shape[1] if per_frame else 1
        flat = driving.reshape(b * frames, *driving.shape[-3:])
        rp_source = self.region_predictor(source)
        owner = torch.arange(b, device=source.device).repeat_interleave(frames)
        flows, occlusions = [], []
        step = chunk_size or flat.shape[0]
        for start in range(0, flat.shape[0], step):
            stop = min(start + step, flat.shape[0])
            drv = flat[start:stop]
            if frames == 1 and stop - start == b:
                src, src_params = source, rp_source
            else:
                idx = owner[start:stop]
                src, src_params = source.index_select(0, idx), rp_source.index_select(idx)
            rp_driving = self.region_predictor(drv)
            bg_params = self.bg_predictor(src, drv)
            flow, occ, _ = self.generator.flow_predictor(src, src_params, rp_driving, bg_params)
            flows.append(flow)
            occlusions.append(occ)
        flow = torch.cat(flows)
        occlusion = None if occlusions[0] is None else torch.cat(occlusions)
        if per_frame:
            flow = flow.view(b, frames, *flow.shape[1:])
            if occlusion is not None:
                occlusion = occlusion.view(b, frames, *occlusion.shape[1:])
        return flow, occlusion

    # ---- decoding given flows -----------------------------------------------------------------

    def encode(self, source: Tensor) -> SourceEncoding:
        """Encode source frames (B,C,H,W) once; `.latent` is z, the stage-two conditioning."""
        self._check_frames(source, "source")
        return SourceEncoding(image=source, features=self.generator.encode(source))

    def decode(self, source: Tensor | SourceEncoding, flow: Tensor, occlusion: Tensor | None, *,
               chunk_size: int | None = None) -> dict[str, Tensor]:
        """Frames warped from `source` by given latent flows (e.g. sampled by the diffusion model).

        source: frames (B,C,H,W) or their `encode` result (encoded once, reused for every frame).
        flow (B,K,h,w,2) with occlusion (B,K,1,h,w): K frames per source; returns prediction and
        deformed (B,K,C,H,W). Or flow (N,h,w,2) with occlusion (N,1,h,w): N == B pairs frame n with
        source n (the reference's forward_with_flow), N a multiple of B gives N/B consecutive frames
        per source; returns (N,C,H,W). All frames are decoded in batches of `chunk_size` (default:
        all at once); the source encoding is broadcast, not recomputed.
        """
        enc = source if isinstance(source, SourceEncoding) else self.encode(source)
        b = len(enc)
        grouped = flow.dim() == 5
        if grouped:
            if flow.shape[0] != b:
                raise ValueError(f"flow has {flow.shape[0]} sources but the encoding has {b}")
            per_source = flow.shape[1]
            flat_flow = flow.reshape(-1, *flow.shape[2:])
            flat_occ = None if occlusion is None else occlusion.reshape(-1, *occlusion.shape[2:])
        elif flow.dim() == 4:
            n = flow.shape[0]
            if n % b:
                raise ValueError(f"{n} flows cannot be shared out over {b} sources")
            per_source = n // b
            flat_flow, flat_occ = flow, occlusion
        else:
            raise ValueError(f"flow must be (N,h,w,2) or (B,K,h,w,2), got {tuple(flow.shape)}")
        occ_ok = flat_occ is None or (flat_occ.dim() == 4 and flat_occ.shape[0] == flat_flow.shape[0])
        if flat_flow.shape[-1] != 2 or not occ_ok:
            raise ValueError(f"flow {tuple(flow.shape)} and occlusion "
                             f"{None if occlusion is None else tuple(occlusion.shape)} do not match")
        total = flat_flow.shape[0]
        owner = torch.arange(b, device=enc.image.device).repeat_interleave(per_source)
        step = chunk_size or total
        predictions, deformed = [], []
        for start in range(0, total, step):
            stop = min(start + step, total)
            if per_source == 1 and stop - start == total:
                image, features = enc.image, enc.features
            else:
                idx = owner[start:stop]
                image = _rows(enc.image, idx, b == 1)
                features = [_rows(f, idx, b == 1) for f in enc.features]
            occ = None if flat_occ is None else flat_occ[start:stop]
            out = self.generator.decode(image, features, flat_flow[start:stop], occ)
            predictions.append(out["prediction"])
            deformed.append(out["deformed"])
        prediction, warped = torch.cat(predictions), torch.cat(deformed)
        if grouped:
            prediction = prediction.view(b, per_source, *prediction.shape[1:])
            warped = warped.view(b, per_source, *warped.shape[1:])
        return {"prediction": prediction, "deformed": warped}


def lfae_meta(config: LFAEModelConfig, frame_size: int) -> dict[str, Any]:
    """The model.yaml entries that rebuild an LFAE (see `load_lfae`)."""
    return {"resolution": frame_size, "lfae": to_dict(config)}


def load_lfae(folder: ModelFolder, device: torch.device | str = "cpu") -> LFAE:
    """Rebuild the LFAE of a model folder (`lfdm_cli.modelfolder.ModelFolder`) from its meta and
    weights; returned in eval mode."""
    meta = folder.meta
    where = f"{folder.path}/model.yaml"
    if "lfae" not in meta or "resolution" not in meta:
        raise UserError(f"{where} has no stage-one model ('lfae' and 'resolution' entries).",
                        hint="Convert a reference checkpoint with `lfdm convert lfae` "
                             "or train one with `lfdm train lfae`.")
    config = from_dict(LFAEModelConfig, meta["lfae"], source=where, prefix="lfae")
    size = meta["resolution"]
    if not isinstance(size, int) or isinstance(size, bool):
        raise UserError(f"{where}: 'resolution' must be an integer, got {size!r}.")
    config.check_frame_size(size, source=where)
    model = LFAE(config, size)
    folder.load_into("lfae", model)
    return model.to(device).eval()
