"""Stage-two training (`lfdm train dm`): the flow diffusion model on clips of K frames.

As the reference trains it (DM/train_video_flow_diffusion_*.py with its FlowDiffusion wrapper):
- a sample is one clip of K frames of a training video (lfdm_cli.training.clips: `uniform`,
  `random` or `very_random`, colour-jittered per clip); an epoch is one pass over the videos;
- the frozen stage one (eval mode) turns the clip into the targets: z0 = the latent of the
  clip's first frame x0, and the flow and occlusion from x0 to every frame of the clip, stacked
  into the volume cat[flow, occlusion * 2 - 1] (B, 3, K, h, w). Unlike the reference, which runs
  the stage-one networks frame by frame, all frames of all clips go through them in a few
  batched calls, or come from the flow cache (lfdm_cli.training.flow_cache);
- the diffusion loss: epsilon-prediction MSE at a uniform timestep, the condition replaced by the
  null condition with probability null_cond_prob (0.1);
- Adam (betas 0.9/0.99) over the diffusion model's weights, the learning rate divided by 10 at
  each epoch milestone; an exponential moving average of the weights is kept beside them.

Condition embeddings are computed once, when the run starts, for the dataset's classes
(classes.txt), and stored in the model (the reference re-runs BERT at every step).

The run ends with `RUN_DIR/model/`: a complete generation-ready model folder holding the
stage-one weights (`lfae`, copied from --lfae), the diffusion weights (`dm`) and their average
(`dm_ema`, what generation uses by default), with the condition names and embedding table.
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lfdm_cli import __version__
from lfdm_cli.config.recipe import Recipe
from lfdm_cli.config.schema import to_dict
from lfdm_cli.data.dataset import Dataset
from lfdm_cli.diffusion.conditions import NULL_CONDITION, build_condition_table, load_embeddings_file
from lfdm_cli.diffusion.config import DMRecipe
from lfdm_cli.diffusion.model import (
    DMSpec,
    FlowDiffusion,
    dm_meta,
    dm_state_dict,
)
from lfdm_cli.errors import UserError
from lfdm_cli.lfae.model import LFAE, load_lfae
from lfdm_cli.modelfolder import ModelFolder, load_model_folder, save_model_folder
from lfdm_cli.training.clips import ClipDataset
from lfdm_cli.training.ema import EMA
from lfdm_cli.training.flow_cache import FlowCache, lfae_digest
from lfdm_cli.training.lfae_trainer import dataset_fingerprint
from lfdm_cli.training.inputs import load_stage_inputs
from lfdm_cli.training.loop import (
    LoopSettings,
    StepContext,
    StepOutput,
    Trainer,
    TrainingTask,
    TrainResult,
    multistep_lr_factor,
    resume_metadata,
)

MODEL_DIR = "model"
FLOW_CACHE_DIR = "flow_cache"
PREVIEW_SAMPLER_STEPS = 10
# Recipe keys that only steer bookkeeping or speed; they may change when a run is resumed. (Whether
# the flow cache is used is recorded separately, as `flow_targets`, where it changes the targets.)
_OPERATIONAL_KEYS = ("workers", "checkpoint_every", "keep_checkpoints", "preview_every", "log_every",
                     "flow_cache", "stage_one_batch")


class DMTrainingModule(nn.Module):
    """The diffusion model's training forward (what DDP wraps): volume, z0, labels -> loss."""

    def __init__(self, dm: FlowDiffusion, classes: list[str]):
        super().__init__()
        self.dm = dm
        self.classes = list(classes)

    def forward(self, volume: torch.Tensor, latent: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        names = [self.classes[i] for i in labels.tolist()]
        out = self.dm.loss_for_names(volume, latent, names)
        return {"loss": out.loss, "null_mask": out.null_mask}


def condition_names(classes: list[str]) -> list[str]:
    """The condition table's rows: the dataset's classes ("None" is the null condition, no row)."""
    return [c for c in classes if c != NULL_CONDITION]


def build_spec(stage: DMRecipe, lfae: LFAE, classes: list[str]) -> DMSpec:
    channels, side, _ = lfae.latent_shape
    return DMSpec(unet=copy.deepcopy(stage.unet), diffusion=copy.deepcopy(stage.diffusion),
                  fea_channels=channels, num_frames=stage.train.num_frames, latent_size=side,
                  encoder=stage.conditions.encoder, text_use_bert_cls=stage.conditions.text_use_bert_cls,
                  conditions=condition_names(classes))


class DMTask(TrainingTask):
    name = "dm"

    def __init__(self, recipe: Recipe, recipe_name: str, data: Dataset, lfae_folder: ModelFolder, *,
                 flow_cache: bool, cache_root: Path, embeddings: str | Path | None = None,
                 bert_dir: str | Path | None = None, show_progress: bool = True):
        if recipe.dm is None:
            raise UserError(f"Recipe '{recipe_name}' has no 'dm' section.",
                            hint="Stage two needs dm: {unet: ..., train: ...}; see `lfdm recipes show mug128`.")
        self.recipe = recipe
        self.recipe_name = recipe_name
        self.stage: DMRecipe = recipe.dm
        train = self.stage.train
        self.data = data
        self.classes = list(data.classes)
        self.lfae_folder = lfae_folder
        self.lfae_digest = lfae_digest(lfae_folder)
        self.lfae = load_lfae(lfae_folder, device="cpu")
        for p in self.lfae.parameters():
            p.requires_grad_(False)
        if self.lfae.frame_size != data.size:
            raise UserError(f"The stage-one model in {lfae_folder.path} works on {self.lfae.frame_size}x"
                            f"{self.lfae.frame_size} frames but the dataset in {data.path} has {data.size}x{data.size}.",
                            hint="Train stage two on the data (and frame size) stage one was trained on.")
        if self.lfae.latent_shape[1] != self.lfae.flow_size:
            raise UserError(f"The stage-one model in {lfae_folder.path} has a {self.lfae.latent_shape[1]} px latent "
                            f"but {self.lfae.flow_size} px flows; stage two needs them equal.",
                            hint="Use a stage-one model whose flow scale_factor is 1 / 2^num_down_blocks "
                                 "(0.25 with two down blocks, as every paper recipe).")
        if not self.lfae.config.generator.pixelwise_flow_predictor.estimate_occlusion_map:
            raise UserError(f"The stage-one model in {lfae_folder.path} estimates no occlusion map, but stage two "
                            "diffuses flow and occlusion together.",
                            hint="Use a stage-one model with estimate_occlusion_map: true (as every paper recipe).")
        self.spec = build_spec(self.stage, self.lfae, self.classes)
        # Text encoders run here, once for the whole run.
        self.condition_rows: torch.Tensor | None = None
        if self.spec.encoder != "learned" or embeddings is not None:
            table = build_condition_table(
                self.spec.conditions, self.spec.encoder, self.spec.cond_dim,
                embeddings=load_embeddings_file(embeddings) if embeddings is not None else None,
                bert_dir=bert_dir, use_cls=self.spec.text_use_bert_cls)
            self.condition_rows = table.rows.detach().clone()
        self.use_cache = flow_cache
        self.cache = FlowCache(cache_root, self.lfae_digest) if flow_cache else None
        self.show_progress = show_progress
        self.dataset = ClipDataset(data, train.num_frames, train.sampling, train.color_jitter)
        self.global_batch = train.batch_size
        self.max_epochs = train.max_epochs
        self._preview_dm: FlowDiffusion | None = None

    # -- TrainingTask ---------------------------------------------------------------------------

    def setup(self, device: torch.device) -> None:
        # First, right after the loop seeded the generators: the initial weights depend on the seed only.
        self.model = FlowDiffusion(self.spec, condition_rows=self.condition_rows).to(device)
        self.module = DMTrainingModule(self.model, self.classes)
        self.ema = EMA(self.model, decay=self.stage.train.ema_decay)
        self.lfae = self.lfae.to(device).eval()
        if self.cache is not None:
            self._build_cache(device)

    def _build_cache(self, device: torch.device) -> None:
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        per_epoch = len(self.dataset) * self.stage.train.num_frames   # stage-one frames an epoch needs without it

        def announce(frames: int, videos: int) -> None:
            if rank == 0 and self.show_progress:
                share = " (this process's share)" if world > 1 else ""
                print(f"Flow cache: computing {frames} frame targets of {videos} videos{share} into "
                      f"{self.cache.folder} before the first step, about {frames * world / per_epoch:.1f} "
                      "epochs' worth of stage-one passes, after which steps need none "
                      "(--no-flow-cache skips this).", file=sys.stderr)

        self.cache.build(self.lfae, self.data, self.dataset.frames_used, device,
                         chunk_size=self.stage.train.stage_one_batch, rank=rank, world_size=world,
                         show_progress=self.show_progress, announce=announce)
        if distributed:
            dist.barrier()
        self.dataset.targets = self.cache

    @property
    def train_module(self) -> nn.Module:
        return self.module

    def build_optimizer(self) -> torch.optim.Optimizer:
        train = self.stage.train
        return torch.optim.Adam(self.model.parameters(), lr=train.lr, betas=(train.betas[0], train.betas[1]))

    def lr_factor(self, epoch: int) -> float:
        return multistep_lr_factor(epoch, self.stage.train.epoch_milestones, gamma=0.1)

    def targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z0 (B, C, h, w), flow (B, K, h, w, 2) and occlusion (B, K, 1, h, w) of a batch of clips,
        in float32 whatever the training precision."""
        frames = batch["frames"]
        device = frames.device
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            x0 = frames[:, 0].float()
            latent = self.lfae.encode(x0).latent
            if "flow" in batch:
                flow, occlusion = batch["flow"].float(), batch["occlusion"].float()
            else:
                flow, occlusion = self.lfae.flow_and_occlusion(x0, frames.float(),
                                                               chunk_size=self.stage.train.stage_one_batch)
        return latent, flow, occlusion

    def training_step(self, module, batch, ctx: StepContext) -> StepOutput:
        latent, flow, occlusion = self.targets(batch)
        out = module(self.model.to_volume(flow, occlusion), latent, batch["label"])
        keep = {"flow": flow[:1].detach(), "occlusion": occlusion[:1].detach(),
                "null": out["null_mask"][:1].detach()}
        return StepOutput(losses={"diffusion": out["loss"]}, outputs=keep)

    def _preview_model(self) -> FlowDiffusion:
        """The EMA weights (what generation uses), in a second copy of the model."""
        if self._preview_dm is None:
            self._preview_dm = copy.deepcopy(self.model)
        if self.ema is not None:
            self._preview_dm.load_state_dict(self.ema.state_dict())
        else:
            self._preview_dm.load_state_dict(self.model.state_dict())
        return self._preview_dm.eval()

    def write_preview(self, batch, output: StepOutput, ctx: StepContext, folder: Path) -> None:
        dm = self._preview_model()
        frames = batch["frames"][:1].float()
        name = self.classes[int(batch["label"][0])]
        k = frames.shape[1]
        encoding = self.lfae.encode(frames[:, 0])
        cond, null = dm.embed([name])
        generator = torch.Generator().manual_seed(int(ctx.seed) * 1_000_003 + ctx.step)
        volume = dm.sample(encoding.latent, cond, null_mask=null, sampler="ddim",
                           steps=min(PREVIEW_SAMPLER_STEPS, dm.schedule.num_timesteps), generator=generator,
                           num_frames=k)
        flow, occlusion = dm.from_volume(volume)
        real_flow, real_occ = output.outputs["flow"], output.outputs["occlusion"]
        real = self.lfae.decode(encoding, real_flow, real_occ)
        fake = self.lfae.decode(encoding, flow, occlusion)
        path = folder / f"step_{ctx.step + 1:07d}.gif"
        write_clip_preview(path, frames[0], real["prediction"][0], real_flow[0], real_occ[0],
                           fake["prediction"][0], fake["deformed"][0], flow[0], occlusion[0], name,
                           fps=float(self.data.fps or 8.0))

    def run_metadata(self) -> dict[str, Any]:
        train = self.stage.train
        if not self.use_cache:
            targets = "exact"
        else:
            targets = "cached_unjittered" if train.color_jitter else "exact"
        rows = None
        if self.condition_rows is not None:
            rows = hashlib.sha256(self.condition_rows.float().numpy().tobytes()).hexdigest()[:16]
        return {
            "lfae_digest": self.lfae_digest,
            "dataset_fingerprint": dataset_fingerprint(self.data),
            "frame_size": self.data.size,
            "conditions": list(self.spec.conditions),
            "condition_encoder": self.spec.encoder,
            "condition_rows_sha256": rows,
            "flow_targets": targets,
        }


# ----------------------------------------------------------------------------- previews

def _enlarge(video: np.ndarray, size: int) -> np.ndarray:
    """uint8 (K, h, w, 3) -> (K, size, size, 3), nearest neighbour (keeps latent pixels visible)."""
    t = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=(size, size), mode="nearest")
    return t.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()


def _frames_uint8(frames: torch.Tensor) -> np.ndarray:
    """(K, 3, H, W) in [0, 1] -> uint8 (K, H, W, 3)."""
    return (frames.float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_clip_preview(path: Path, clip: torch.Tensor, reconstruction: torch.Tensor, flow: torch.Tensor,
                       occlusion: torch.Tensor, sample: torch.Tensor, sample_warped: torch.Tensor,
                       sample_flow: torch.Tensor, sample_occlusion: torch.Tensor, condition: str,
                       fps: float = 8.0) -> Path:
    """An animated GIF: top row the real clip, its flow (Middlebury colours, one scale for real and
    sampled flows), its occlusion and stage one's reconstruction from that flow; bottom row a
    video sampled for the clip's first frame and condition, its flow, occlusion and warped frame."""
    from lfdm_cli.io import grid_to_color, grid_to_displacement, make_grid, occlusion_to_gray, write_video

    size = max(clip.shape[-1], 96)
    real_flow, fake_flow = flow.float().cpu().numpy(), sample_flow.float().cpu().numpy()
    magnitude = lambda g: float(np.linalg.norm(grid_to_displacement(g), axis=-1).max(initial=0.0))
    scale = max(magnitude(real_flow), magnitude(fake_flow), 1e-3)
    tiles = [
        _frames_uint8(clip), grid_to_color(real_flow, max_flow=scale),
        occlusion_to_gray(occlusion.float().cpu().numpy()), _frames_uint8(reconstruction),
        _frames_uint8(sample), grid_to_color(fake_flow, max_flow=scale),
        occlusion_to_gray(sample_occlusion.float().cpu().numpy()), _frames_uint8(sample_warped),
    ]
    captions = ["real clip", "real flow", "real occlusion", "stage-one recon.",
                f"sample: {condition}", "sample flow", "sample occl.", "sample warped"]
    grid = make_grid([_enlarge(t, size) for t in tiles], captions=captions, ncols=4)
    return write_video(path, grid, fps=fps)


# ----------------------------------------------------------------------------- entry point

def _defining_recipe(recipe: Recipe) -> dict[str, Any]:
    """The parts of the recipe that determine the training trajectory (compared on resume)."""
    dm = to_dict(recipe.dm)
    for key in _OPERATIONAL_KEYS:
        dm["train"].pop(key, None)
    return {"data": to_dict(recipe.data), "dm": dm}


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def train_dm(recipe: str | Path, data: str | Path, lfae: str | Path, out: str | Path, *, resume: bool = False,
             max_steps: int | None = None, device: str = "auto", precision: str = "fp32", seed: int | None = None,
             flow_cache: bool | None = None, flow_cache_dir: str | Path | None = None, workers: int | None = None,
             embeddings: str | Path | None = None, bert_dir: str | Path | None = None,
             show_progress: bool = True) -> TrainResult:
    """Run (or resume) stage-two training; on rank 0 the run ends with RUN_DIR/model/.

    flow_cache: None follows the recipe (dm.train.flow_cache); flow_cache_dir: where the cache
    lives (default RUN_DIR/flow_cache; share one folder between runs on the same data and LFAE).
    """
    recipe_path, rec, dataset, train_split = load_stage_inputs(recipe, data, "dm")
    folder = load_model_folder(lfae)
    use_cache = rec.dm.train.flow_cache if flow_cache is None else bool(flow_cache)
    cache_root = Path(flow_cache_dir) if flow_cache_dir is not None else Path(out) / FLOW_CACHE_DIR
    task = DMTask(rec, recipe_path.stem, train_split, folder, flow_cache=use_cache, cache_root=cache_root,
                  embeddings=embeddings, bert_dir=bert_dir, show_progress=show_progress)
    if resume:
        # Before the flow cache is built for a stage one the run cannot continue with anyway.
        recorded = resume_metadata(out)
        if recorded is not None:
            task.check_resume(recorded)
    train = rec.dm.train
    if use_cache and train.color_jitter and _is_main_process() and show_progress:
        print("Note: flow targets come from the flow cache, computed on frames without colour jitter "
              "(z0 still sees the jittered frame); --no-flow-cache computes them from the jittered "
              "frames every step, as the reference does.", file=sys.stderr)
    settings = LoopSettings(
        run_dir=Path(out), max_steps=max_steps, seed=seed, resume=resume, device=device, precision=precision,
        checkpoint_every=train.checkpoint_every, keep_checkpoints=train.keep_checkpoints,
        log_every=train.log_every, preview_every=train.preview_every,
        workers=train.workers if workers is None else workers,
        recipe=_defining_recipe(rec), show_progress=show_progress)
    result = Trainer(task, settings).run()
    if result.is_main:
        steps_per_epoch = max(1, len(task.dataset) // task.global_batch)
        meta = {
            "resolution": folder.meta["resolution"],
            "lfae": folder.meta["lfae"],
            "dm": dm_meta(task.model),
            "fps": dataset.fps,
            "fit": dataset.meta.get("fit"),
            "provenance": {
                "source": "lfdm train dm",
                "recipe": recipe_path.stem,
                "steps": result.step,
                "epochs": result.step / steps_per_epoch,
                "dataset": str(Path(data).resolve()),
                "dataset_fingerprint": dataset_fingerprint(train_split),
                "lfae": str(Path(lfae).resolve()),
                "lfae_digest": task.lfae_digest,
                "flow_targets": task.run_metadata()["flow_targets"],
                "package_version": __version__,
                "seed": result.seed,
                "precision": result.precision,
                "world_size": result.world_size,
            },
        }
        parts = {"lfae": folder.load_tensors("lfae"), "dm": dm_state_dict(task.model),
                 "dm_ema": {k: v.detach().cpu() for k, v in task.ema.state_dict().items()}}
        save_model_folder(Path(out) / MODEL_DIR, meta, parts, overwrite=True)
    return result


__all__ = ["DMTask", "DMTrainingModule", "FLOW_CACHE_DIR", "MODEL_DIR", "build_spec", "condition_names",
           "train_dm", "write_clip_preview"]
