"""Image-to-video generation: stage one (LFAE) and stage two (flow diffusion) composed.

One `GenerationPipeline` holds a model folder's two stages on one device. `generate` runs the
paper's inference path for a batch of images:

1. z0 = the encoder's latent of each image, computed once (`encode`);
2. the diffusion model samples K latent flows and occlusion maps conditioned on z0 and the
   condition embedding (`sample_motion`);
3. the decoder warps the encoded image by each flow: all K frames of every image in one batched
   pass, in chunks when memory requires (`decode`).

Randomness comes from one CPU `torch.Generator` per sample, seeded with that sample's seed, so a
batch of N with seeds S..S+N-1 samples the same noise as N single runs (the frames then agree up
to float rounding: CPU kernels sum in a batch-size-dependent order). Passing `seeds=None` draws
from torch's global RNG in the authors' order instead (their demo calls `torch.manual_seed` once).

The model's frame 0 is generated like every other frame (as in the authors' code); it is close
to, but not exactly, the input image.

`precision` picks the arithmetic of the networks: fp32 (default), bf16 (CPU with AVX-512 BF16 /
AMX or a CUDA GPU with bf16) or fp16 (CUDA only), as autocast regions around the three steps;
the sampler's own arithmetic (schedule, thresholding, the update) always stays float32. On the
CPU the U-Net runs channels-last (oneDNN's fast layout; results differ by float rounding only).
`compile=True` wraps the U-Net in `torch.compile`: the first call of every new input shape
compiles it (over a minute on a CPU, needs a C++ compiler); on the CPU later calls measured
0-14% faster.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lfdm_cli.errors import RunFailure, UserError, unknown_name_error

SAMPLERS = ("ddim", "dpmpp", "ddpm")
DDIM_SPACINGS = ("trailing", "reference")
DEFAULT_FPS = 10.0  # the authors' demo GIFs: imageio's default 0.1 s per frame
DEFAULT_FIT = "pad"  # the authors' dataset preparation: aspect-preserving resize, black bars
MODEL_ENV = "LFDM_MODEL"
# Frames per decoder pass on the CPU when no chunk size is given: passes of 2-4 frames decoded a
# paper-size video 10-15% faster than passes of 8 on 2 cores (all 40 at once was slower still and
# used more memory); a GPU decodes all frames at once.
CPU_DECODE_CHUNK = 4
# On the CPU a U-Net call gets as many samples as fit this many elements of first-level activation
# (frames x h x w x dim): measured on 2 cores (benchmarks/results/cpu-2core.md), ten paper-size
# samples (2.6M elements each) denoised 1.6x faster one at a time than as one batch, while ten
# bundled-model samples (0.13M each) denoised 1.4x faster as one batch than one at a time.
CPU_UNET_ELEMENTS = 2 ** 21
BUNDLED_MODEL = "synthfaces64"


@dataclass
class SamplingSettings:
    """How the flows are sampled. `steps` is ignored by ddpm (always the schedule's T steps)."""

    sampler: str = "ddim"
    steps: int = 10
    eta: float = 0.0
    guidance: float = 1.0
    # The authors' DDIM timesteps: on the bundled model they scored FVD 315 against 320-324 for
    # the textbook trailing spacing (70 test videos, seeds 0 and 1000; see its model card).
    ddim_spacing: str = "reference"

    def resolved(self, timesteps: int) -> "SamplingSettings":
        """Checked copy, with ddpm's step count set to the schedule's length."""
        sampler = self.sampler.lower()
        if sampler not in SAMPLERS:
            raise unknown_name_error("sampler", self.sampler, SAMPLERS)
        if self.ddim_spacing not in DDIM_SPACINGS:
            raise unknown_name_error("DDIM spacing", self.ddim_spacing, DDIM_SPACINGS)
        steps = int(timesteps) if sampler == "ddpm" else int(self.steps)
        if not 1 <= steps <= timesteps:
            raise UserError(f"--steps must be between 1 and the model's {timesteps} diffusion timesteps, got {steps}.")
        if not (np.isfinite(self.eta) and self.eta >= 0):
            raise UserError(f"--eta must be a number >= 0, got {self.eta}.")
        if not np.isfinite(self.guidance):
            raise UserError(f"--guidance must be a finite number, got {self.guidance}.")
        spacing = self.ddim_spacing if sampler == "ddim" else "trailing"
        return SamplingSettings(sampler, steps, float(self.eta), float(self.guidance), spacing)

    def to_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "steps": self.steps, "eta": self.eta, "guidance": self.guidance,
                "ddim_spacing": self.ddim_spacing}


@dataclass
class GenerationResult:
    """Generated videos and what they were made from, all float32 on the CPU.

    videos, warped: (B, K, 3, H, W) in [0, 1] (warped = the input image warped by the flow
    alone, before the decoder inpaints occluded parts); flows: (B, K, h, w, 2) absolute
    sampling grids; occlusions: (B, K, 1, h, w) in [0, 1], 1 = visible. timings in seconds.
    """

    videos: torch.Tensor
    warped: torch.Tensor
    flows: torch.Tensor
    occlusions: torch.Tensor
    conditions: list[str]
    seeds: list[int] | None
    settings: SamplingSettings
    timings: dict[str, float] = field(default_factory=dict)


def default_model_path() -> Path:
    """$LFDM_MODEL, else the bundled model in `weights/` beside the package."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "weights" / BUNDLED_MODEL


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed: the noise does not depend on the device the model runs on."""
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def check_precision(precision: str, device: torch.device) -> str:
    """`precision` if the device can run it, else a UserError saying what to use instead."""
    from lfdm_cli.precision import PRECISIONS, check_cuda_bf16

    if precision not in PRECISIONS:
        raise unknown_name_error("precision", precision, PRECISIONS)
    if precision == "fp16" and device.type != "cuda":
        raise UserError(f"--precision fp16 needs a CUDA device (this run is on {device}).",
                        hint="Use --precision bf16 on the CPU, or fp32.")
    check_cuda_bf16(precision, device)
    return precision


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


class GenerationPipeline:
    """A model folder's LFAE and diffusion model, ready to generate on one device."""

    def __init__(self, lfae, dm, *, device: torch.device | str = "cpu", model_path: Path | None = None,
                 meta: dict[str, Any] | None = None, digest: str | None = None, ema: bool = True,
                 precision: str = "fp32", compile: bool = False):
        self.device = torch.device(device)
        self.compiled = bool(compile)
        self.precision = check_precision(precision, self.device)
        self.lfae = lfae.to(self.device).eval()
        self.dm = dm.to(self.device).eval()
        self.model_path = model_path
        self.meta = dict(meta or {})
        self.digest = digest
        self.ema = ema
        latent_c = self.lfae.latent_shape[0]
        if self.dm.spec.fea_channels != latent_c:
            raise UserError(f"The diffusion model expects {self.dm.spec.fea_channels}-channel image latents but the "
                            f"auto-encoder makes {latent_c}-channel ones{self._where()}.",
                            hint="The two stages of a model folder must be trained (or converted) together.")
        if self.lfae.latent_shape[1] != self.lfae.flow_size:
            raise UserError(f"The auto-encoder's latent ({self.lfae.latent_shape[1]} px) and flow "
                            f"({self.lfae.flow_size} px) sizes differ{self._where()}; the diffusion model "
                            "needs them equal.")
        # The most rows per U-Net call; None: the whole batch on a GPU, `unet_rows`' rule on a CPU.
        self.unet_batch: int | None = None
        if self.device.type == "cpu":
            self.dm.unet.use_channels_last()
        if self.compiled:
            # Only the U-Net: it runs `steps` times per video; the stage-one networks run once.
            self.dm.unet = torch.compile(self.dm.unet)

    def _autocast(self):
        """The autocast region of the networks' forward passes (a no-op context for fp32)."""
        from lfdm_cli.precision import autocast

        return autocast(self.device, self.precision)

    def _where(self) -> str:
        return f" in {self.model_path}" if self.model_path else ""

    # ---- loading ------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                    ema: bool = True, precision: str = "fp32", compile: bool = False) -> "GenerationPipeline":
        """Load a model folder (default: `default_model_path()`); `ema` picks the EMA weights of the
        diffusion model when the folder has them."""
        from lfdm_cli.diffusion.model import load_dm
        from lfdm_cli.lfae.model import load_lfae
        from lfdm_cli.modelfolder import load_model_folder

        if path is None:
            path = default_model_path()
            if os.environ.get(MODEL_ENV) and not Path(path).exists():
                raise UserError(f"${MODEL_ENV} names {path}, which does not exist.",
                                hint=f"Point {MODEL_ENV} at a model folder, or pass --model MODEL_DIR.")
            if not Path(path).exists():
                raise UserError(f"No --model given and the bundled model is not installed ({path} is missing).",
                                hint=f"Pass --model MODEL_DIR (a folder from `lfdm train` or `lfdm convert`), "
                                     f"or set {MODEL_ENV}.")
        folder = load_model_folder(path)
        lfae = load_lfae(folder, device="cpu")
        dm = load_dm(folder.path, ema=ema, device="cpu")
        return cls(lfae, dm, device=device, model_path=folder.path, meta=folder.meta, digest=folder.digest(),
                   ema=ema, precision=precision, compile=compile)

    # ---- what the model offers ----------------------------------------------------------------

    @property
    def conditions(self) -> list[str]:
        return list(self.dm.conditions.names)

    @property
    def resolution(self) -> int:
        return int(self.lfae.frame_size)

    @property
    def default_frames(self) -> int:
        return int(self.dm.spec.num_frames)

    @property
    def timesteps(self) -> int:
        return int(self.dm.schedule.num_timesteps)

    def _meta_default(self, key: str) -> Any:
        for section in (self.meta.get("generation"), self.meta, self.meta.get("data")):
            if isinstance(section, dict) and section.get(key) is not None:
                return section[key]
        return None

    @property
    def fps(self) -> float:
        value = self._meta_default("fps")
        return float(value) if isinstance(value, (int, float)) and value > 0 else DEFAULT_FPS

    @property
    def fit(self) -> str:
        value = self._meta_default("fit")
        return value if value in ("pad", "crop", "stretch") else DEFAULT_FIT

    def default_settings(self) -> SamplingSettings:
        """lfdm's defaults, overridden by the model folder's `generation:` entries (a converted
        reference model samples as the authors' code does unless told otherwise)."""
        base = SamplingSettings()
        gen = self.meta.get("generation")
        if isinstance(gen, dict):
            for key in ("sampler", "steps", "eta", "guidance", "ddim_spacing"):
                if gen.get(key) is not None:
                    setattr(base, key, type(getattr(base, key))(gen[key]))
        return base

    def check_conditions(self, names: Sequence[str]) -> None:
        """Raise a UserError naming the model's conditions (and the closest) for unknown names."""
        table = self.dm.conditions
        for name in names:
            if name not in table:
                raise unknown_name_error("condition", name, self.conditions + ["None"],
                                         where=f"the model {self.model_path}" if self.model_path else "the model")

    # ---- inputs -------------------------------------------------------------------------------

    def prepare_images(self, images: Sequence[np.ndarray], fit: str | None = None) -> torch.Tensor:
        """uint8 (H, W, 3) images of any size -> (B, 3, S, S) float in [0, 1] on the device,
        fitted to the model's resolution (`fit`: pad, crop or stretch; default the model's)."""
        from lfdm_cli.io import fit_frames

        fitted = [fit_frames(im, self.resolution, fit or self.fit) for im in images]
        batch = torch.from_numpy(np.stack(fitted)).permute(0, 3, 1, 2).float().div_(255.0)
        return batch.to(self.device)

    # ---- the three steps ----------------------------------------------------------------------

    def encode(self, images: torch.Tensor):
        """`SourceEncoding` of (B, 3, S, S) images in [0, 1]; `.latent` is z0."""
        with self._autocast():
            return self.lfae.encode(images.to(self.device))

    def unet_rows(self, frames: int, height: int, width: int) -> int | None:
        """Samples per U-Net call for volumes of `frames` x height x width (None: all at once)."""
        if self.unet_batch is not None or self.device.type != "cpu":
            return self.unet_batch
        return max(1, CPU_UNET_ELEMENTS // (frames * height * width * self.dm.spec.unet.dim))

    def sample_motion(self, latent: torch.Tensor, conditions: Sequence[str], *, frames: int | None = None,
                      settings: SamplingSettings | None = None, generators: Sequence[torch.Generator] | None = None,
                      callback: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent flows (B, K, h, w, 2) and occlusions (B, K, 1, h, w) for latents (B, C, h, w).

        generators: one per sample (see `cpu_generators`), or None for torch's global RNG.
        """
        settings = (settings or self.default_settings()).resolved(self.timesteps)
        conditions = list(conditions)
        if len(conditions) != latent.shape[0]:
            raise ValueError(f"{len(conditions)} conditions for {latent.shape[0]} latents")
        if generators is not None and len(generators) != latent.shape[0]:
            raise ValueError(f"{len(generators)} generators for {latent.shape[0]} latents")
        self.check_conditions(conditions)
        frames = int(frames or self.default_frames)
        if frames < 1:
            raise UserError(f"--frames must be at least 1, got {frames}.")
        cond, null = self.dm.embed(conditions)
        with self._autocast():
            volume = self.dm.sample(latent.float(), cond.to(self.device), null_mask=null.to(self.device),
                                    sampler=settings.sampler, steps=settings.steps, eta=settings.eta,
                                    spacing=settings.ddim_spacing, guidance=settings.guidance,
                                    generator=list(generators) if generators is not None else None,
                                    num_frames=frames, callback=callback,
                                    max_batch=self.unet_rows(frames, latent.shape[-2], latent.shape[-1]))
        if not torch.isfinite(volume).all():
            raise RunFailure("The diffusion model produced NaN or infinite flows.",
                             hint="The weights may be broken; try --no-ema or another model.")
        flow, occlusion = self.dm.from_volume(volume)
        return flow.contiguous(), occlusion.contiguous()

    def decode(self, encoding, flow: torch.Tensor, occlusion: torch.Tensor, *,
               chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames and warped images (B, K, 3, S, S) for flows (B, K, h, w, 2) in passes of
        `chunk_size` frames (default: all at once on a GPU, CPU_DECODE_CHUNK on the CPU), the
        source encoded once; on a CUDA out-of-memory error the chunk is halved."""
        total = flow.shape[0] * flow.shape[1]
        chunk = chunk_size or (min(total, CPU_DECODE_CHUNK) if self.device.type == "cpu" else total)
        while True:
            try:
                with self._autocast():
                    out = self.lfae.decode(encoding, flow, occlusion, chunk_size=chunk)
                return out["prediction"].float(), out["deformed"].float()
            except RuntimeError as exc:
                if self.device.type != "cuda" or not _is_oom(exc) or chunk <= 1:
                    if _is_oom(exc):
                        raise RunFailure(f"Out of memory while decoding frames on {self.device}.",
                                         hint="Use --device cpu, fewer --frames or a smaller --batch-size.") from None
                    raise
                torch.cuda.empty_cache()
                chunk = max(1, chunk // 2)

    # ---- all together -------------------------------------------------------------------------

    def generate(self, images: torch.Tensor, conditions: Sequence[str], *, frames: int | None = None,
                 sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                 guidance: float | None = None, ddim_spacing: str | None = None,
                 seeds: Sequence[int] | None = None, chunk_size: int | None = None,
                 progress: bool = False) -> GenerationResult:
        """Videos for images (B, 3, S, S) in [0, 1], one condition and one seed per image.

        Unset sampling arguments take the model's defaults (`default_settings`). `seeds=None`
        draws from torch's global RNG (the authors' order: seed it with torch.manual_seed).
        """
        from lfdm_cli.progress import Progress

        settings = self.default_settings()
        for key, value in (("sampler", sampler), ("steps", steps), ("eta", eta), ("guidance", guidance),
                           ("ddim_spacing", ddim_spacing)):
            if value is not None:
                setattr(settings, key, value)
        settings = settings.resolved(self.timesteps)
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.resolution, self.resolution):
            raise ValueError(f"images must be (B, 3, {self.resolution}, {self.resolution}), got {tuple(images.shape)}")
        b = images.shape[0]
        conditions = list(conditions)
        if len(conditions) != b:
            raise ValueError(f"{len(conditions)} conditions for {b} images")
        if seeds is not None and len(seeds) != b:
            raise ValueError(f"{len(seeds)} seeds for {b} images")
        self.check_conditions(conditions)
        timings: dict[str, float] = {}
        bar = Progress(settings.steps, "sampling", unit="step", enabled=progress)
        try:
            with torch.inference_mode():
                t0 = time.perf_counter()
                encoding = self.encode(images)
                _sync(self.device)
                t1 = time.perf_counter()
                flow, occlusion = self.sample_motion(
                    encoding.latent, conditions, frames=frames, settings=settings,
                    generators=cpu_generators(seeds) if seeds is not None else None,
                    callback=lambda i, n: bar.update(1))
                _sync(self.device)
                t2 = time.perf_counter()
                videos, warped = self.decode(encoding, flow, occlusion, chunk_size=chunk_size)
                result = GenerationResult(
                    videos=videos.float().cpu(), warped=warped.float().cpu(), flows=flow.float().cpu(),
                    occlusions=occlusion.float().cpu(), conditions=conditions,
                    seeds=[int(s) for s in seeds] if seeds is not None else None, settings=settings)
                t3 = time.perf_counter()
        finally:
            bar.close()
        if not torch.isfinite(result.videos).all():
            raise RunFailure("The decoder produced NaN frames.", hint="The stage-one weights may be broken.")
        timings.update(encode_s=t1 - t0, sample_s=t2 - t1, decode_s=t3 - t2, total_s=t3 - t0)
        result.timings = timings
        return result
