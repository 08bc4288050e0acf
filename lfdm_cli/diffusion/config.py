"""Stage-two (flow diffusion model) configuration.

Field names follow the reference's `Unet3D(...)` / `GaussianDiffusion(...)` arguments so that a
converted checkpoint's configuration reads across one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UNet3DConfig:
    """The conditional 3D U-Net. Defaults are the paper's (FlowDiffusion: dim 64, mults 1,2,4,8).

    The input channels are not set here: they are 3 + the stage-one latent's channels.
    """

    dim: int = field(default=64, metadata={"min": 8})
    dim_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata={"min": 1})
    attn_heads: int = field(default=8, metadata={"min": 1})
    attn_dim_head: int = field(default=32, metadata={"min": 2})
    # The reference leaves these at their defaults (32): head width of the spatial attentions
    # (linear attention at every level, full attention in the middle).
    spatial_attn_dim_head: int = field(default=32, metadata={"min": 1})
    # Rotary embedding width: min(32, attn_dim_head) in the reference.
    rotary_dim: int = field(default=32, metadata={"min": 2})
    rel_pos_num_buckets: int = field(default=32, metadata={"min": 4})
    rel_pos_max_distance: int = field(default=32, metadata={"min": 2})
    init_kernel_size: int = field(default=7, metadata={"min": 1})
    use_sparse_linear_attn: bool = True
    resnet_groups: int = field(default=8, metadata={"min": 1})
    learn_null_cond: bool = False
    use_deconv: bool = True
    padding_mode: str = field(default="zeros", metadata={"choices": ("zeros", "reflect", "replicate", "circular")})
    # Width of the condition embedding; null = the condition encoder's (bert 768, minilm 384,
    # learned 768).
    cond_dim: int | None = field(default=None, metadata={"min": 1})

    def validate(self, source: str | None = None) -> None:
        from lfdm_cli.errors import UserError

        where = f" (in {source})" if source else ""
        if self.init_kernel_size % 2 != 1:
            raise UserError(f"Field 'init_kernel_size'{where}: must be odd, got {self.init_kernel_size}.")
        if self.rotary_dim % 2:
            raise UserError(f"Field 'rotary_dim'{where}: must be even, got {self.rotary_dim}.")
        if not self.dim_mults:
            raise UserError(f"Field 'dim_mults'{where}: needs at least one level.")
        for width in [self.dim] + [self.dim * m for m in self.dim_mults]:
            if width % self.resnet_groups:
                raise UserError(f"Field 'resnet_groups'{where}: every level width (dim x dim_mults) must be "
                                f"divisible by it; {width} is not divisible by {self.resnet_groups}.")


@dataclass
class DiffusionConfig:
    timesteps: int = field(default=1000, metadata={"min": 2})
    beta_schedule: str = field(default="cosine", metadata={"choices": ("cosine",)})
    cosine_s: float = field(default=0.008, metadata={"min": 0.0})
    loss_type: str = field(default="l2", metadata={"choices": ("l1", "l2")})
    # What the U-Net predicts: "eps" (the noise, as the paper and the authors' code) or "v"
    # (sqrt(acp) eps - sqrt(1 - acp) x0, Salimans & Ho 2022). v stays well conditioned at the
    # highest noise levels, where an eps model must be nearly exact before its x0 is usable, so a
    # short training run samples from pure noise much sooner. Samplers see eps either way.
    prediction: str = field(default="eps", metadata={"choices": ("eps", "v")})
    # How flows enter the diffusion volume: "grid" (the paper: the absolute sampling grid, values
    # in [-1, 1]) or "displacement" (grid minus the identity grid, times displacement_scale).
    # Motion is a few percent of the grid's range, so with "grid" the network must reproduce the
    # identity to that precision before any motion shows; "displacement" centres the target on the
    # motion itself. displacement_scale brings typical displacements (std ~0.04 on SynthFaces)
    # to a few tenths, inside the [-1, 1] range that thresholding keeps.
    flow_target: str = field(default="grid", metadata={"choices": ("grid", "displacement")})
    displacement_scale: float = field(default=8.0, metadata={"min": 1e-6})
    use_dynamic_thres: bool = True
    dynamic_thres_percentile: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})
    null_cond_prob: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})


@dataclass
class ConditionConfig:
    """Where the condition embeddings come from (computed once, stored in the model folder)."""

    encoder: str = field(default="learned", metadata={"choices": ("learned", "bert", "minilm")})
    # BERT only: use the [CLS] vector instead of the masked token mean (the reference: False).
    text_use_bert_cls: bool = False


@dataclass
class DMTrainConfig:
    """Training settings. Defaults are the authors' MUG run (train_video_flow_diffusion_mug.py)."""

    num_frames: int = field(default=40, metadata={"min": 2})
    sampling: str = field(default="very_random", metadata={"choices": ("uniform", "random", "very_random")})
    batch_size: int = field(default=5, metadata={"min": 1})
    max_epochs: int = field(default=1200, metadata={"min": 1})
    epoch_milestones: list[int] = field(default_factory=lambda: [800, 1000], metadata={"min": 0})
    lr: float = field(default=2e-4, metadata={"min": 0.0})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99], metadata={"min": 0.0, "max": 1.0})
    ema_decay: float = field(default=0.999, metadata={"min": 0.0, "max": 1.0})
    color_jitter: bool = True
    flow_cache: bool = True
    # Frames per call of the frozen stage one while computing flow targets (bounds its memory).
    stage_one_batch: int = field(default=80, metadata={"min": 1})
    workers: int = field(default=2, metadata={"min": 0})
    checkpoint_every: int = field(default=1000, metadata={"min": 1})
    keep_checkpoints: int = field(default=3, metadata={"min": 1})
    preview_every: int = field(default=1000, metadata={"min": 1})
    log_every: int = field(default=10, metadata={"min": 1})


@dataclass
class DMRecipe:
    unet: UNet3DConfig = field(default_factory=UNet3DConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    conditions: ConditionConfig = field(default_factory=ConditionConfig)
    train: DMTrainConfig = field(default_factory=DMTrainConfig)
