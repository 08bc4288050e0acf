"""Stage-two (flow diffusion model) configuration.

Field names follow the reference's `Unet3D(...)` / `GaussianDiffusion(...)` arguments so that a
converted checkpoint's configuration reads across one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UNet3DConfig:
    """The conditional 3D U-Net. Defaults are the paper's (FlowDiffusion: dim 64, mults 1,2,4,8)."""

    dim: int = field(default=64, metadata={"min": 1})
    dim_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata={"min": 1})
    attn_heads: int = field(default=8, metadata={"min": 1})
    attn_dim_head: int = field(default=32, metadata={"min": 1})
    init_kernel_size: int = field(default=7, metadata={"min": 1})
    use_sparse_linear_attn: bool = True
    resnet_groups: int = field(default=8, metadata={"min": 1})
    use_final_activation: bool = False
    learn_null_cond: bool = False
    use_deconv: bool = True
    padding_mode: str = field(default="zeros", metadata={"choices": ("zeros", "reflect", "replicate", "circular")})
    cond_dim: int = field(default=768, metadata={"min": 1})


@dataclass
class DiffusionConfig:
    timesteps: int = field(default=1000, metadata={"min": 1})
    beta_schedule: str = field(default="cosine", metadata={"choices": ("cosine",)})
    cosine_s: float = field(default=0.008, metadata={"min": 0.0})
    loss_type: str = field(default="l2", metadata={"choices": ("l1", "l2")})
    use_dynamic_thres: bool = True
    dynamic_thres_percentile: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})
    null_cond_prob: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})


@dataclass
class ConditionConfig:
    """Where the condition embeddings come from (computed once, stored in the model folder)."""

    encoder: str = field(default="learned", metadata={"choices": ("learned", "bert", "minilm")})


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
