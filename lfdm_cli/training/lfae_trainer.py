"""Stage-one training (`lfdm train lfae`): the latent flow auto-encoder on frame pairs.

As the reference trains it (LFAE/train.py with MRAA's ReconstructionModel):
- a sample is two frames of one training video, two uniform draws sorted in time (source first),
  flipped and colour-jittered identically (lfdm_cli.lfae.transforms.augment_frames);
- an epoch is num_repeats passes over the training videos (the reference's DatasetRepeater);
- Adam(lr, betas 0.5/0.999) over all LFAE weights, the learning rate divided by 10 at each epoch
  milestone; losses: perceptual pyramid + equivariance shift + equivariance affine
  (lfdm_cli.lfae.losses).
The run ends with `RUN_DIR/model/`, a model folder the later stages load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from lfdm_cli import __version__
from lfdm_cli.config.recipe import Recipe
from lfdm_cli.config.schema import to_dict
from lfdm_cli.data.dataset import Dataset
from lfdm_cli.errors import UserError
from lfdm_cli.lfae.config import AugmentationConfig, LFAERecipe
from lfdm_cli.lfae.losses import (
    PERCEPTUAL_FALLBACK,
    LFAETrainingModule,
    PerceptualChoice,
    build_perceptual,
    choose_perceptual,
    print_note,
)
from lfdm_cli.lfae.model import LFAE, lfae_meta
from lfdm_cli.lfae.transforms import RandomTPS, augment_frames
from lfdm_cli.modelfolder import save_model_folder
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
# Recipe keys that only steer bookkeeping; they may change when a run is resumed.
_OPERATIONAL_KEYS = ("workers", "checkpoint_every", "keep_checkpoints", "preview_every", "log_every")


class FramePairs:
    """num_repeats x (training videos) samples per epoch: item i is a pair from video i % n."""

    def __init__(self, dataset: Dataset, num_repeats: int, augmentation: AugmentationConfig,
                 id_sampling: bool = False):
        self.dataset = dataset
        self.videos = list(dataset.videos)
        self.num_repeats = num_repeats
        self.augmentation = augmentation
        self.same_subject: list[list[int]] | None = None
        if id_sampling:
            by_subject: dict[str, list[int]] = {}
            for i, v in enumerate(self.videos):
                by_subject.setdefault(v.subject or v.id, []).append(i)
            self.same_subject = [by_subject[v.subject or v.id] for v in self.videos]

    def __len__(self) -> int:
        return self.num_repeats * len(self.videos)

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        video = index % len(self.videos)
        if self.same_subject is not None:
            choices = self.same_subject[video]
            video = choices[int(rng.integers(len(choices)))]
        frames = self.dataset.load(self.videos[video], mmap=True)
        picks = np.sort(rng.choice(frames.shape[0], size=2, replace=True))
        pair = augment_frames(np.ascontiguousarray(frames[picks]), rng, self.augmentation)
        pair = pair.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
        return {"source": np.ascontiguousarray(pair[0]), "driving": np.ascontiguousarray(pair[1]),
                "video": np.int64(video), "frames": picks.astype(np.int64)}


def dataset_fingerprint(dataset: Dataset) -> str:
    """Identifies the training videos (ids and lengths): a resumed run must see the same ones."""
    h = hashlib.sha256()
    for v in dataset.videos:
        h.update(f"{v.id}\t{v.frames}\t{v.height}\t{v.width}\n".encode())
    return h.hexdigest()[:16]


class LFAETask(TrainingTask):
    name = "lfae"

    def __init__(self, recipe: Recipe, recipe_name: str, data: Dataset, perceptual: PerceptualChoice):
        if recipe.lfae is None:
            raise UserError(f"Recipe '{recipe_name}' has no 'lfae' section.",
                            hint="Stage one needs lfae: {model: ..., train: ...}; see `lfdm recipes show mug128`.")
        self.recipe = recipe
        self.recipe_name = recipe_name
        self.stage: LFAERecipe = recipe.lfae
        self.data = data
        self.frame_size = recipe.data.size
        self.perceptual_choice = perceptual
        train = self.stage.train
        self.dataset = FramePairs(data, train.num_repeats, train.augmentation, train.id_sampling)
        self.global_batch = train.batch_size
        self.max_epochs = train.max_epochs

    # -- TrainingTask ---------------------------------------------------------------------------

    def setup(self, device: torch.device) -> None:
        self.model = LFAE(self.stage.model, self.frame_size)
        perceptual = build_perceptual(self.perceptual_choice, self.stage.train, self.stage.model.num_channels,
                                      self.frame_size)
        self.module = LFAETrainingModule(self.model, self.stage.train, perceptual).to(device)

    @property
    def train_module(self) -> torch.nn.Module:
        return self.module

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.stage.train.lr, betas=(0.5, 0.999))

    def lr_factor(self, epoch: int) -> float:
        return multistep_lr_factor(epoch, self.stage.train.epoch_milestones, gamma=0.1)

    def training_step(self, module, batch, ctx: StepContext) -> StepOutput:
        # Drawn for the global batch and sliced, so N processes see the warps one process would.
        transform = RandomTPS.sample(ctx.global_batch, self.stage.train.transform_params,
                                     generator=ctx.generator("equivariance"), rows=ctx.local_rows,
                                     device=ctx.device)
        losses, generated = module(batch["source"], batch["driving"], transform)
        keep = {k: generated[k][:1].detach() for k in ("prediction", "deformed", "optical_flow", "occlusion_map")
                if generated.get(k) is not None}
        return StepOutput(losses=losses, outputs=keep)

    def write_preview(self, batch, output: StepOutput, ctx: StepContext, folder: Path) -> None:
        write_pair_preview(folder / f"step_{ctx.step + 1:07d}.png", batch["source"][0], batch["driving"][0],
                           output.outputs)

    def run_metadata(self) -> dict[str, Any]:
        return {
            "perceptual_loss": self.perceptual_choice.kind,
            "vgg_weights_sha256": self.perceptual_choice.weights_sha256,
            "dataset_fingerprint": dataset_fingerprint(self.data),
            "frame_size": self.frame_size,
        }


def write_pair_preview(path: Path, source: torch.Tensor, driving: torch.Tensor, generated: Mapping[str, Any]) -> None:
    """source | driving | reconstruction | warped source | flow (Middlebury colours) | occlusion."""
    from lfdm_cli.io import grid_to_color, make_grid, occlusion_to_gray, save_image

    # Small frames are enlarged (nearest) so that the tiles and their captions stay legible.
    size = max(source.shape[-1], 96)

    def enlarge(image: Any) -> np.ndarray:
        if isinstance(image, torch.Tensor):
            image = (image.float().cpu().clamp(0, 1) * 255).permute(1, 2, 0).numpy()
        t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        t = F.interpolate(t, size=(size, size), mode="nearest")
        return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    tiles = [enlarge(source), enlarge(driving), enlarge(generated["prediction"][0]),
             enlarge(generated["deformed"][0]),
             enlarge(grid_to_color(generated["optical_flow"][0].float().cpu().numpy()))]
    captions = ["source", "driving", "reconstruction", "warped source", "flow"]
    occ = generated.get("occlusion_map")
    if occ is not None:
        tiles.append(enlarge(occlusion_to_gray(occ[0].float().cpu().numpy())))
        captions.append("occlusion")
    grid = make_grid(tiles, captions=captions)
    save_image(path, grid[0])


def _defining_recipe(recipe: Recipe) -> dict[str, Any]:
    """The parts of the recipe that determine the training trajectory (compared on resume)."""
    lfae = to_dict(recipe.lfae)
    for key in _OPERATIONAL_KEYS:
        lfae["train"].pop(key, None)
    return {"data": to_dict(recipe.data), "lfae": lfae}


def train_lfae(recipe: str | Path, data: str | Path, out: str | Path, *, resume: bool = False,
               max_steps: int | None = None, device: str = "auto", precision: str = "fp32",
               vgg_weights: str | Path | None = None, seed: int | None = None, workers: int | None = None,
               show_progress: bool = True) -> TrainResult:
    """Run (or resume) stage-one training; on rank 0 the run ends with RUN_DIR/model/."""
    recipe_path, rec, dataset, train_split = load_stage_inputs(recipe, data, "lfae")
    rec.lfae.model.check_frame_size(rec.data.size, source=str(recipe_path))

    recorded = resume_metadata(out) if resume else None
    choice = choose_perceptual(rec.lfae.train.loss_weights.perceptual, vgg_weights,
                               recorded.get("perceptual_loss") if recorded else None)
    task = LFAETask(rec, recipe_path.stem, train_split, choice)
    train = rec.lfae.train
    settings = LoopSettings(
        run_dir=Path(out), max_steps=max_steps, seed=seed, resume=resume, device=device, precision=precision,
        checkpoint_every=train.checkpoint_every, keep_checkpoints=train.keep_checkpoints,
        log_every=train.log_every, preview_every=train.preview_every,
        workers=train.workers if workers is None else workers,
        recipe=_defining_recipe(rec), show_progress=show_progress)
    trainer = Trainer(task, settings)
    if _is_main_process():
        print_note(choice)
    result = trainer.run()
    if result.is_main:
        meta = {
            **lfae_meta(rec.lfae.model, rec.data.size),
            "provenance": {
                "source": "lfdm train lfae",
                "recipe": recipe_path.stem,
                "steps": result.step,
                "epochs": result.step / max(1, len(task.dataset) // task.global_batch),
                "dataset": str(Path(data).resolve()),
                "dataset_fingerprint": dataset_fingerprint(train_split),
                "package_version": __version__,
                "perceptual_loss": choice.kind,
                "seed": result.seed,
                "precision": result.precision,
                "world_size": result.world_size,
            },
        }
        save_model_folder(Path(out) / MODEL_DIR, meta, {"lfae": task.model.state_dict()}, overwrite=True)
    return result


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") in ("", "0")


__all__ = ["FramePairs", "LFAETask", "MODEL_DIR", "PERCEPTUAL_FALLBACK", "dataset_fingerprint", "train_lfae",
           "write_pair_preview"]
