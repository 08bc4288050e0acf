"""Stage-one (latent flow auto-encoder) configuration.

Field names follow the reference's YAML (config/mug128.yaml) so its values can be read across
one to one; `lfdm_cli.convert` maps a reference YAML onto these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RegionPredictorConfig:
    temperature: float = field(default=0.1, metadata={"min": 1e-6})
    block_expansion: int = field(default=32, metadata={"min": 1})
    max_features: int = field(default=1024, metadata={"min": 1})
    scale_factor: float = field(default=0.25, metadata={"min": 1e-6, "max": 1.0})
    num_blocks: int = field(default=5, metadata={"min": 1})
    pca_based: bool = True
    fast_svd: bool = False
    pad: int = field(default=3, metadata={"min": 0})


@dataclass
class BGPredictorConfig:
    block_expansion: int = field(default=32, metadata={"min": 1})
    max_features: int = field(default=1024, metadata={"min": 1})
    num_blocks: int = field(default=5, metadata={"min": 1})
    bg_type: str = field(default="affine", metadata={"choices": ("affine", "zero")})


@dataclass
class PixelwiseFlowConfig:
    block_expansion: int = field(default=64, metadata={"min": 1})
    max_features: int = field(default=1024, metadata={"min": 1})
    num_blocks: int = field(default=5, metadata={"min": 1})
    scale_factor: float = field(default=0.25, metadata={"min": 1e-6, "max": 1.0})
    use_deformed_source: bool = True
    use_covar_heatmap: bool = True
    estimate_occlusion_map: bool = True


@dataclass
class GeneratorConfig:
    block_expansion: int = field(default=64, metadata={"min": 1})
    max_features: int = field(default=512, metadata={"min": 1})
    num_down_blocks: int = field(default=2, metadata={"min": 1})
    num_bottleneck_blocks: int = field(default=6, metadata={"min": 0})
    skips: bool = True
    pixelwise_flow_predictor: PixelwiseFlowConfig = field(default_factory=PixelwiseFlowConfig)


@dataclass
class LFAEModelConfig:
    """Architecture. Defaults are the paper's MUG 128x128 stage one (config/mug128.yaml)."""

    num_regions: int = field(default=10, metadata={"min": 1})
    num_channels: int = field(default=3, metadata={"choices": (1, 3)})
    estimate_affine: bool = True
    revert_axis_swap: bool = True
    region_predictor: RegionPredictorConfig = field(default_factory=RegionPredictorConfig)
    bg_predictor: BGPredictorConfig = field(default_factory=BGPredictorConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)


@dataclass
class TransformConfig:
    """Random affine + thin-plate-spline transforms for the MRAA equivariance losses."""

    sigma_affine: float = field(default=0.05, metadata={"min": 0.0})
    sigma_tps: float = field(default=0.005, metadata={"min": 0.0})
    points_tps: int = field(default=5, metadata={"min": 2})


@dataclass
class LossWeights:
    perceptual: list[float] = field(default_factory=lambda: [10.0, 10.0, 10.0, 10.0, 10.0],
                                    metadata={"min": 0.0})
    equivariance_shift: float = field(default=10.0, metadata={"min": 0.0})
    equivariance_affine: float = field(default=10.0, metadata={"min": 0.0})


@dataclass
class AugmentationConfig:
    horizontal_flip: bool = True
    time_flip: bool = True
    brightness: float = field(default=0.1, metadata={"min": 0.0})
    contrast: float = field(default=0.1, metadata={"min": 0.0})
    saturation: float = field(default=0.1, metadata={"min": 0.0})
    hue: float = field(default=0.1, metadata={"min": 0.0, "max": 0.5})


@dataclass
class LFAETrainConfig:
    """Training settings. Defaults are the paper's (LFAE/config/mug128.yaml train_params)."""

    max_epochs: int = field(default=100, metadata={"min": 1})
    num_repeats: int = field(default=100, metadata={"min": 1})
    epoch_milestones: list[int] = field(default_factory=lambda: [60, 90], metadata={"min": 0})
    lr: float = field(default=2e-4, metadata={"min": 0.0})
    batch_size: int = field(default=100, metadata={"min": 1})
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125],
                                metadata={"min": 0.0, "max": 1.0})
    transform_params: TransformConfig = field(default_factory=TransformConfig)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    workers: int = field(default=2, metadata={"min": 0})
    checkpoint_every: int = field(default=1000, metadata={"min": 1})
    keep_checkpoints: int = field(default=3, metadata={"min": 1})
    preview_every: int = field(default=500, metadata={"min": 1})
    log_every: int = field(default=10, metadata={"min": 1})


@dataclass
class LFAERecipe:
    model: LFAEModelConfig = field(default_factory=LFAEModelConfig)
    train: LFAETrainConfig = field(default_factory=LFAETrainConfig)
