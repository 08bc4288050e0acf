"""Tiny random model folders for generation tests (seconds on a CPU, meaningless output).

A folder holds what `lfdm train` writes: model.yaml with `resolution`, `lfae` (stage-one config),
`dm` (stage-two spec with the condition names), `fps` and `fit`, plus lfae.safetensors,
dm.safetensors and dm_ema.safetensors, written with `save_model_folder`. The EMA weights differ
slightly from the raw ones so tests can tell which were used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lfdm_cli.config.schema import from_dict
from lfdm_cli.diffusion.config import DiffusionConfig, UNet3DConfig
from lfdm_cli.diffusion.model import DMSpec, FlowDiffusion, dm_meta, dm_state_dict
from lfdm_cli.lfae.config import LFAEModelConfig
from lfdm_cli.lfae.model import LFAE, lfae_meta
from lfdm_cli.modelfolder import save_model_folder

CONDITIONS = ["happiness", "sadness", "surprise"]
SIZE = 32
FRAMES = 6
TIMESTEPS = 100


def tiny_lfae_config() -> LFAEModelConfig:
    return from_dict(LFAEModelConfig, {
        "num_regions": 3,
        "region_predictor": {"block_expansion": 4, "max_features": 16, "num_blocks": 2},
        "bg_predictor": {"block_expansion": 4, "max_features": 16, "num_blocks": 2},
        "generator": {"block_expansion": 4, "max_features": 16, "num_bottleneck_blocks": 1,
                      "pixelwise_flow_predictor": {"block_expansion": 4, "max_features": 16, "num_blocks": 2}},
    })


def tiny_dm_spec(latent_channels: int, latent_size: int, frames: int = FRAMES,
                 conditions: list[str] | None = None, timesteps: int = TIMESTEPS) -> DMSpec:
    return DMSpec(
        unet=UNet3DConfig(dim=8, dim_mults=[1, 2], attn_heads=2, attn_dim_head=8, spatial_attn_dim_head=8,
                          rotary_dim=8, cond_dim=16),
        diffusion=DiffusionConfig(timesteps=timesteps), fea_channels=latent_channels, num_frames=frames,
        latent_size=latent_size, encoder="learned", conditions=list(conditions or CONDITIONS))


def build_tiny_models(seed: int = 0, frames: int = FRAMES, conditions: list[str] | None = None
                      ) -> tuple[LFAE, FlowDiffusion, LFAEModelConfig]:
    torch.manual_seed(seed)
    config = tiny_lfae_config()
    lfae = LFAE(config, SIZE).eval()
    with torch.no_grad():
        # Peaked region heatmaps and non-trivial batch-norm statistics, as a trained model has.
        lfae.region_predictor.region_head.weight.mul_(3)
        for module in lfae.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    c, side, _ = lfae.latent_shape
    dm = FlowDiffusion(tiny_dm_spec(c, side, frames, conditions)).eval()
    return lfae, dm, config


def build_tiny_model_folder(path: str | Path, *, seed: int = 0, frames: int = FRAMES,
                            conditions: list[str] | None = None, fps: float = 8.0, fit: str = "pad") -> Path:
    lfae, dm, config = build_tiny_models(seed, frames, conditions)
    raw = dm_state_dict(dm)
    gen = torch.Generator().manual_seed(seed + 1)
    ema = {k: (v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone())
           for k, v in raw.items()}
    meta = {**lfae_meta(config, SIZE), "dm": dm_meta(dm), "fps": fps, "fit": fit,
            "provenance": {"source": "tests/model_factory.py (random weights)"}}
    return save_model_folder(path, meta, {"lfae": lfae.state_dict(), "dm": raw, "dm_ema": ema})


def write_test_image(path: str | Path, height: int = 40, width: int = 48, seed: int = 0) -> Path:
    """A smooth colour image (not square, so fitting matters) saved with Pillow."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.05, 0.3, 2).tolist() + [rng.uniform(0, 6.28)]
        channels.append(0.5 + 0.5 * np.sin(fx * x + fy * y + phase))
    image = (np.stack(channels, -1) * 255).round().astype(np.uint8)
    path = Path(path)
    Image.fromarray(image).save(path)
    return path


def run_main(*args) -> int:
    """Run the `lfdm` CLI in this process (faster than a subprocess); returns the exit code.
    Read its output with pytest's capsys."""
    from lfdm_cli.cli.app import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
