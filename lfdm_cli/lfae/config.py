"""Stage-one (latent flow auto-encoder) configuration.

Field names follow the reference's YAML (config/mug128.yaml) so its values can be read across
one to one; `lfdm_cli.convert` maps a reference YAML onto these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lfdm_cli.errors import UserError


@dataclass
class RegionPredictorConfig:
    temperature: float = field(default=0.1, metadata={"min": 1e-6})
    block_expansion: int = field(default=32, metadata={"min": 1})
    max_features: int = field(default=1024, metadata={"min": 1})
    scale_factor: float = field(default=0.25, metadata={"min": 1e-6, "max": 1.0})
    num_blocks: int = field(default=5, metadata={"min": 1})
    pca_based: bool = True
    # The reference switches to the CUDA-only torch_batch_svd package here. It computes the same
    # decomposition, so lfdm accepts the key (to read the authors' YAML) and always uses torch's SVD.
    fast_svd: bool = False
    # Padding of the 7x7 region-logit convolution; the reference's MHAD/NATOPS configs set 0.
    pad: int = field(default=3, metadata={"min": 0})


@dataclass
class BGPredictorConfig:
    block_expansion: int = field(default=32, metadata={"min": 1})
    max_features: int = field(default=1024, metadata={"min": 1})
    num_blocks: int = field(default=5, metadata={"min": 1})
    bg_type: str = field(default="affine", metadata={"choices": ("zero", "shift", "affine", "perspective")})


@dataclass
class PixelwiseFlowConfig:
    block_expansion: int = field(default=64, metadata={"min": 1})
    max_features: int = field(default=1024, metadata={"min": 1})
    num_blocks: int = field(default=5, metadata={"min": 1})
    scale_factor: float = field(default=0.25, metadata={"min": 1e-6, "max": 1.0})
    use_deformed_source: bool = True
    use_covar_heatmap: bool = True
    estimate_occlusion_map: bool = True
    # Isotropic Gaussian variance of the region heatmaps when `use_covar_heatmap` is false.
    region_var: float = field(default=0.01, metadata={"min": 1e-8})


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

    @property
    def has_region_covariance(self) -> bool:
        """Whether the region predictor produces covariances (and affines): PCA or regression."""
        return self.region_predictor.pca_based or self.estimate_affine

    def validate(self, source: str | None = None) -> None:
        where = f" (in {source})" if source else ""
        if self.generator.pixelwise_flow_predictor.use_covar_heatmap and not self.has_region_covariance:
            raise UserError(
                f"LFAE config{where}: pixelwise_flow_predictor.use_covar_heatmap needs region covariances, "
                "but the region predictor has neither pca_based nor estimate_affine set.",
                hint="Set region_predictor.pca_based: true (the paper's setting).")

    def check_frame_size(self, size: int, source: str | None = None) -> None:
        """Raise UserError unless every down/up path of the model fits frames of `size` pixels.

        The hourglasses pool by 2 per block and concatenate skips after upsampling, so each one needs
        its input side to be divisible by 2**num_blocks.
        """
        where = f" (in {source})" if source else ""
        problems = []
        rp, pfp, gen = self.region_predictor, self.generator.pixelwise_flow_predictor, self.generator
        for name, scale, blocks in (("region_predictor", rp.scale_factor, rp.num_blocks),
                                    ("pixelwise_flow_predictor", pfp.scale_factor, pfp.num_blocks)):
            side = scaled_side(size, scale)
            if side % (2 ** blocks):
                problems.append(f"{name} works at {side}x{side} (scale_factor {scale}) and its "
                                f"{blocks} hourglass blocks need a multiple of {2 ** blocks}")
        if scaled_side(size, rp.scale_factor) + 2 * rp.pad - 6 < 1:
            problems.append("the region heatmaps would be empty (7x7 convolution larger than the input)")
        if size % (2 ** gen.num_down_blocks):
            problems.append(f"the generator's {gen.num_down_blocks} down blocks need a multiple of "
                            f"{2 ** gen.num_down_blocks}")
        if problems:
            raise UserError(f"Frame size {size} does not fit this LFAE configuration{where}: "
                            + "; ".join(problems) + ".",
                            hint="The paper's configuration needs frames of 128 (or a multiple of 128) pixels; "
                                 "smaller frames need fewer hourglass blocks (num_blocks).")


def scaled_side(size: int, scale_factor: float) -> int:
    """Side of a frame after the anti-aliased downsampling (strided by int(1/scale) after padding)."""
    if scale_factor == 1:
        return size
    step = int(1 / scale_factor)
    return -(-size // step)


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
    # The reference's MHAD setting: a sample draws its video among all training videos of the
    # same subject as the indexed one (both frames still come from that one video).
    id_sampling: bool = False
    workers: int = field(default=2, metadata={"min": 0})
    checkpoint_every: int = field(default=1000, metadata={"min": 1})
    keep_checkpoints: int = field(default=3, metadata={"min": 1})
    preview_every: int = field(default=500, metadata={"min": 1})
    log_every: int = field(default=10, metadata={"min": 1})


@dataclass
class LFAERecipe:
    model: LFAEModelConfig = field(default_factory=LFAEModelConfig)
    train: LFAETrainConfig = field(default_factory=LFAETrainConfig)
