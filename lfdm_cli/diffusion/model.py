"""The stage-two model: U-Net + diffusion schedule + condition table, and its model-folder form.

The diffused quantity is the flow volume x = [flow_x, flow_y, occlusion*2-1] of shape
(B, 3, F, h, w): the backward sampling grids from stage one (absolute grid_sample coordinates,
not displacements) and the occlusion maps rescaled to [-1, 1]. The U-Net sees cat[x, z0] where z0
is the stage-one latent of the reference frame repeated over the F frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from lfdm_cli.config.schema import from_dict, to_dict
from lfdm_cli.diffusion import samplers as _samplers
from lfdm_cli.diffusion.conditions import ENCODER_DIMS, ENCODERS, NULL_CONDITION, ConditionTable
from lfdm_cli.diffusion.config import DiffusionConfig, UNet3DConfig
from lfdm_cli.diffusion.guidance import GuidedDenoiser
from lfdm_cli.diffusion.objective import LossOutput, diffusion_loss
from lfdm_cli.diffusion.schedule import DiffusionSchedule
from lfdm_cli.diffusion.unet3d import UNet3D
from lfdm_cli.errors import UserError

DM_PART = "dm"
DM_EMA_PART = "dm_ema"
META_KEY = "dm"


# --------------------------------------------------------------------------------------------
# Flow/occlusion <-> volume


def volume_from_flow(flow: torch.Tensor, occlusion: torch.Tensor) -> torch.Tensor:
    """flow (B, F, h, w, 2) grids (x, y) and occlusion (B, F, 1, h, w) in [0, 1] -> (B, 3, F, h, w)."""
    grid = flow.permute(0, 4, 1, 2, 3)
    occ = occlusion.permute(0, 2, 1, 3, 4)
    return torch.cat((grid, occ * 2 - 1), dim=1)


def flow_from_volume(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, F, h, w) -> flow (B, F, h, w, 2) and occlusion (B, F, 1, h, w) = (x[:, 2] + 1) / 2."""
    flow = x[:, :2].permute(0, 2, 3, 4, 1)
    occ = ((x[:, 2:3] + 1) * 0.5).permute(0, 2, 1, 3, 4)
    return flow, occ


def _identity_grid(flow: torch.Tensor) -> torch.Tensor:
    from lfdm_cli.lfae.layers import coordinate_grid

    return coordinate_grid(flow.shape[-3], flow.shape[-2], dtype=flow.dtype, device=flow.device)


# --------------------------------------------------------------------------------------------
# Model description (what model.yaml stores under `dm`)


@dataclass
class DMSpec:
    """Everything needed to rebuild the DM from a model folder."""

    unet: UNet3DConfig = field(default_factory=UNet3DConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    fea_channels: int = field(default=256, metadata={"min": 1})
    num_frames: int = field(default=40, metadata={"min": 1})
    latent_size: int = field(default=32, metadata={"min": 1})
    encoder: str = field(default="learned", metadata={"choices": ENCODERS})
    text_use_bert_cls: bool = False
    conditions: list[str] = field(default_factory=list)

    @property
    def cond_dim(self) -> int:
        return self.unet.cond_dim if self.unet.cond_dim is not None else ENCODER_DIMS[self.encoder]

    @property
    def in_channels(self) -> int:
        return 3 + self.fea_channels


class FlowDiffusion(nn.Module):
    """U-Net, schedule and condition table of stage two."""

    def __init__(self, spec: DMSpec, condition_rows: torch.Tensor | None = None):
        super().__init__()
        self.spec = spec
        self.unet = UNet3D(spec.unet, channels=spec.in_channels, cond_dim=spec.cond_dim)
        self.schedule = DiffusionSchedule(spec.diffusion.timesteps, spec.diffusion.cosine_s)
        self.conditions = ConditionTable(spec.conditions, spec.cond_dim, learned=spec.encoder == "learned",
                                         rows=condition_rows, encoder=spec.encoder)

    # ---- conditioning ----

    def embed(self, names: Sequence[str], *, free_text: bool = False, bert_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition embeddings (B, D) and null mask (B,) for condition names.

        Unknown names are an error naming the closest known condition, unless `free_text`: then
        they are embedded with the model's text encoder (bert or minilm; a learned table cannot
        embed new text, which is also an error)."""
        if not free_text or all(n in self.conditions for n in names):
            return self.conditions.lookup(names)
        from lfdm_cli.diffusion.conditions import encode_texts

        known = [n if n in self.conditions else NULL_CONDITION for n in names]
        emb, null = self.conditions.lookup(known)
        new = [n for n in names if n not in self.conditions]
        rows = encode_texts(self.spec.encoder, new, bert_dir=bert_dir, use_cls=self.spec.text_use_bert_cls)
        if rows.shape[-1] != emb.shape[-1]:
            raise UserError(f"The text encoder gives {rows.shape[-1]}-d embeddings; this model expects {emb.shape[-1]}-d.")
        emb = emb.clone()
        for i, row in zip([i for i, n in enumerate(names) if n not in self.conditions], rows):
            emb[i] = row.to(emb)
            null[i] = False
        return emb, null

    @property
    def dynamic_percentile(self) -> float | None:
        d = self.spec.diffusion
        return d.dynamic_thres_percentile if d.use_dynamic_thres else None

    # ---- flows <-> the volume the network denoises ----

    def to_volume(self, flow: torch.Tensor, occlusion: torch.Tensor) -> torch.Tensor:
        """Flow grids (B, F, h, w, 2) and occlusions (B, F, 1, h, w) -> the (B, 3, F, h, w) volume
        this model denoises (`diffusion.flow_target`)."""
        d = self.spec.diffusion
        if d.flow_target == "displacement":
            flow = (flow - _identity_grid(flow)) * d.displacement_scale
        return volume_from_flow(flow, occlusion)

    def from_volume(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of `to_volume`: flow grids and occlusions of a sampled volume."""
        flow, occ = flow_from_volume(x)
        d = self.spec.diffusion
        if d.flow_target == "displacement":
            flow = flow / d.displacement_scale + _identity_grid(flow)
        return flow, occ

    # ---- training ----

    def loss(self, x0: torch.Tensor, fea: torch.Tensor, cond: torch.Tensor | None,
             null_mask: torch.Tensor | None = None, *, generator: torch.Generator | None = None) -> LossOutput:
        """Loss for a batch of clean volumes x0 (B,3,F,h,w), latents fea (B,C,h,w) and condition
        embeddings cond (B,D); `null_mask` marks samples whose label is the null condition."""
        d = self.spec.diffusion
        return diffusion_loss(self.unet, self.schedule, x0, fea, cond, null_cond_prob=d.null_cond_prob,
                              none_mask=null_mask, loss_type=d.loss_type, generator=generator,
                              prediction=d.prediction)

    def loss_for_names(self, x0: torch.Tensor, fea: torch.Tensor, names: Sequence[str], *,
                       generator: torch.Generator | None = None) -> LossOutput:
        cond, null = self.embed(names)
        return self.loss(x0, fea, cond, null, generator=generator)

    # ---- sampling ----

    def denoiser(self, fea: torch.Tensor, cond: torch.Tensor | None, guidance: float = 1.0,
                 null_mask: torch.Tensor | None = None, max_batch: int | None = None) -> GuidedDenoiser:
        v_schedule = self.schedule if self.spec.diffusion.prediction == "v" else None
        return GuidedDenoiser(self.unet, fea, cond, guidance, null_mask, v_schedule, max_batch)

    @torch.no_grad()
    def sample(self, fea: torch.Tensor, cond: torch.Tensor | None, *, null_mask: torch.Tensor | None = None,
               sampler: str = "ddim", steps: int | None = 10, eta: float = 0.0, spacing: str = "trailing",
               guidance: float = 1.0, generator: torch.Generator | None = None, num_frames: int | None = None,
               x_T: torch.Tensor | None = None, callback=None, max_batch: int | None = None) -> torch.Tensor:
        """Sample flow volumes (B, 3, F, h, w) for latents fea (B, C, h, w) and embeddings cond;
        the U-Net sees at most `max_batch` rows per call (None: all)."""
        b, _, h, w = fea.shape
        frames = num_frames or self.spec.num_frames
        den = self.denoiser(fea, cond, guidance, null_mask, max_batch)
        return _samplers.sample(sampler, den, self.schedule, (b, 3, frames, h, w), steps=steps, eta=eta,
                                spacing=spacing, generator=generator, x_T=x_T, device=fea.device,
                                clip_denoised=True, dynamic_percentile=self.dynamic_percentile,
                                callback=callback)


# --------------------------------------------------------------------------------------------
# Model folders


def build_dm(spec: DMSpec) -> FlowDiffusion:
    return FlowDiffusion(spec)


def dm_meta(model: FlowDiffusion) -> dict[str, Any]:
    """The `dm` entry of model.yaml."""
    return to_dict(model.spec)


def spec_from_meta(meta: dict[str, Any], source: str = "model.yaml") -> DMSpec:
    if META_KEY not in meta:
        raise UserError(f"{source} has no '{META_KEY}' section: this model folder holds no stage-two model.",
                        hint="Train one with `lfdm train dm` or convert one with `lfdm convert dm`.")
    return from_dict(DMSpec, meta[META_KEY], source=source, prefix=META_KEY)


def dm_state_dict(model: FlowDiffusion) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_dm(folder: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> FlowDiffusion:
    """Build the DM of a model folder and load its weights (the EMA weights when present and
    `ema`, else the raw ones), in eval mode."""
    from lfdm_cli.modelfolder import load_model_folder

    mf = load_model_folder(folder)
    spec = spec_from_meta(mf.meta, source=str(mf.path / "model.yaml"))
    model = FlowDiffusion(spec)
    part = DM_EMA_PART if ema and mf.has(DM_EMA_PART) else DM_PART
    mf.load_into(part, model)
    return model.to(device).eval()
