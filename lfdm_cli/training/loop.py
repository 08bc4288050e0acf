"""The training loop shared by both stages.

A stage describes itself as a `TrainingTask` (model, data, optimizer, losses, previews); the
`Trainer` runs it: device and process group, deterministic data order, mixed precision,
checkpoints, exact resume, Ctrl-C, NaN/inf detection, logging and the progress bar.

Run folder:

    RUN_DIR/run.json                 what the run is: task, seed, recipe, task metadata, command
    RUN_DIR/log.jsonl                one JSON object per logged step: every loss term, lr, speed
    RUN_DIR/checkpoints/step_N/      see lfdm_cli.training.checkpoint (the newest few are kept)
    RUN_DIR/previews/                whatever the task's write_preview puts there

Determinism: the samples of global step s are a pure function of (seed, s) (see
lfdm_cli.training.sampler), and the global random generators (python, numpy, torch) are
re-seeded from (seed, s, rank) before every step, so `--resume` continues bit-for-bit and
randomness never depends on how many steps a previous process ran. Randomness that must be the
same on every process (e.g. per-sample noise drawn for the global batch and then sliced) comes
from `StepContext.generator(purpose)`.

Distributed (torchrun): the task's batch size is the global batch, split evenly over processes;
BatchNorm statistics are synchronised across processes (so N processes train exactly like one
with the global batch); only rank 0 logs, previews and writes checkpoints.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import signal
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from lfdm_cli import __version__
from lfdm_cli.atomic import write_text_atomic
from lfdm_cli.errors import RunFailure, UserError
from lfdm_cli.modelfolder import load_state_checked
from lfdm_cli.progress import Progress
from lfdm_cli.training.checkpoint import (
    Checkpoint,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    optimizer_state_from_flat,
    optimizer_state_to_flat,
    restore_rng_state,
    save_checkpoint,
)
from lfdm_cli.training.distributed import (
    DistributedContext,
    all_reduce_max,
    all_reduce_mean,
    setup_distributed,
    synchronize_batchnorm,
)
from lfdm_cli.precision import PRECISIONS, check_cuda_bf16
from lfdm_cli.precision import autocast as precision_autocast
from lfdm_cli.training.ema import EMA
from lfdm_cli.training.sampler import EpochDataset, EpochSampler, KeyedDataset

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
PREVIEWS_DIR = "previews"
RUN_FORMAT = "lfdm-run/1"


# ----------------------------------------------------------------------------- task interface

@dataclass
class StepContext:
    """What a training step knows about where it is."""

    step: int            # number of optimizer steps completed before this one (0-based step index)
    epoch: int
    rank: int
    world_size: int
    global_batch: int
    local_batch: int
    device: torch.device
    seed: int

    @property
    def local_rows(self) -> slice:
        """This process's rows of a tensor drawn for the whole global batch."""
        return slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)

    def generator(self, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded by (seed, step, purpose): the same on every process."""
        g = torch.Generator(device=device)
        g.manual_seed(_derive_seed(self.seed, self.step, zlib.crc32(purpose.encode())))
        return g


@dataclass
class StepOutput:
    losses: dict[str, torch.Tensor]   # weighted loss terms; the optimised loss is their sum
    outputs: Any = None               # anything write_preview wants (e.g. the reconstruction)


class TrainingTask:
    """One stage's training: subclass and fill in the parts marked below.

    Required attributes: `name` (str), `dataset` (an EpochDataset), `global_batch` (int),
    `max_epochs` (int); after `setup`: `model` (the nn.Module that is optimised, checkpointed and
    EMA-averaged).
    Optional: `train_module` (an nn.Module containing `model` whose forward is called exactly once
    per step through `training_step`: it is what DDP wraps; defaults to `model`), `ema` (EMA).
    """

    name: str = "train"
    model: nn.Module
    dataset: EpochDataset
    global_batch: int
    max_epochs: int
    ema: EMA | None = None

    @property
    def train_module(self) -> nn.Module:
        return self.model

    def setup(self, device: torch.device) -> None:
        """Build the modules (`model`, `ema`, loss networks...) and put them on `device`.

        Called once by the Trainer after seeding every random generator from the run's seed, so
        the initial weights are a function of the seed; before resuming and before DDP wrapping.
        """
        raise NotImplementedError

    def build_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def lr_factor(self, epoch: int) -> float:
        """Multiplier on each parameter group's initial learning rate during `epoch`."""
        return 1.0

    def training_step(self, module: nn.Module, batch: dict[str, Any], ctx: StepContext) -> StepOutput:
        """Compute the loss terms for this process's share of a batch. `module` is
        `train_module`, possibly wrapped in DistributedDataParallel: call it once."""
        raise NotImplementedError

    def write_preview(self, batch: dict[str, Any], output: StepOutput, ctx: StepContext, folder: Path) -> None:
        """Rank 0 only. Runs under torch.no_grad; `self.model` is unwrapped (put it in eval()
        before any forward pass: a train-mode synchronised BatchNorm would wait for the other
        processes)."""

    def run_metadata(self) -> dict[str, Any]:
        """JSON facts that define the run (loss kind, data...): recorded, and checked on resume."""
        return {}

    def check_resume(self, recorded: Mapping[str, Any]) -> None:
        """Refuse to resume a run whose recorded metadata differs from this task's."""
        mine = self.run_metadata()
        diffs = [k for k in sorted(set(mine) | set(recorded)) if mine.get(k) != recorded.get(k)]
        if diffs:
            lines = [f"  {k}: run has {recorded.get(k)!r}, now {mine.get(k)!r}" for k in diffs]
            raise UserError("Cannot resume: this run was started with different settings:\n" + "\n".join(lines),
                            hint="Resume with the settings the run was started with, or start a new run folder.")

    def extra_state(self) -> dict[str, Any]:
        """JSON state of the task itself, saved in every checkpoint."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass


def multistep_lr_factor(epoch: int, milestones: list[int], gamma: float = 0.1) -> float:
    """MultiStepLR as a pure function of the epoch: gamma ** (number of milestones <= epoch)."""
    return gamma ** sum(1 for m in milestones if m <= epoch)


# ----------------------------------------------------------------------------- settings, results

@dataclass
class LoopSettings:
    run_dir: Path
    max_steps: int | None = None        # stop after this many steps in total (None: the full schedule)
    seed: int | None = None             # None: 0 for a new run, the recorded seed on resume
    resume: bool = False
    device: str = "auto"
    precision: str = "fp32"             # fp32 | bf16 | fp16 (CUDA only; CPU always runs fp32)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    preview_every: int = 0              # 0: no previews
    max_grad_norm: float | None = None  # clip gradients to this norm (None: no clipping)
    workers: int = 0                    # data-loader worker processes
    sync_batchnorm: bool = True         # cross-process BatchNorm statistics under DDP
    find_unused_parameters: bool = False
    recipe: dict[str, Any] = field(default_factory=dict)   # recorded; must match on resume
    show_progress: bool = True


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    total_steps: int
    checkpoint: Path | None
    losses: dict[str, float]
    seed: int
    is_main: bool
    world_size: int
    precision: str


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after a signal-triggered checkpoint; the CLI exits with 128 + signum."""

    def __init__(self, signum: int, checkpoint: Path | None, step: int):
        super().__init__(f"interrupted by signal {signum} at step {step}")
        self.signum = signum
        self.checkpoint = checkpoint
        self.step = step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# ----------------------------------------------------------------------------- helpers

def _derive_seed(*parts: int) -> int:
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int(state[0]) | (int(state[1]) << 32) & 0x7FFFFFFFFFFFFFFF


def _seed_step(seed: int, step: int, rank: int) -> None:
    import random

    s = _derive_seed(seed, step, rank, 0x5EED)
    random.seed(s)
    np.random.seed(s % (2 ** 32))
    torch.manual_seed(s)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _worker_init(_: int) -> None:
    # Ctrl-C reaches the whole foreground process group; workers must outlive it so the main
    # process can finish its step and write the checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def read_run_record(run_dir: str | Path) -> dict[str, Any] | None:
    """run.json of a run folder, or None."""
    file = Path(run_dir) / RUN_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{file} is not readable JSON: {exc}") from None


def resume_metadata(run_dir: str | Path) -> dict[str, Any] | None:
    """The task metadata the run's newest checkpoint was written with (None: nothing to resume).

    Stages read it before building their task when a setting must follow the recorded run
    (e.g. stage one keeps the perceptual-loss kind it started with)."""
    ckpt = latest_checkpoint(run_dir)
    return None if ckpt is None else dict(ckpt.state.get("metadata") or {})


def _dict_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _dict_diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix or '(root)'}: run has {a!r}, now {b!r}"]


class _StopRequest:
    """First SIGINT/SIGTERM: finish the step, checkpoint, exit. Second: stop immediately."""

    def __init__(self, announce: bool):
        self.signum: int | None = None
        self.announce = announce
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            print(f"\n{signal.Signals(signum).name} received: finishing this step and saving a checkpoint "
                  "(send it again to quit without saving).", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    def __init__(self, task: TrainingTask, settings: LoopSettings):
        if settings.precision not in PRECISIONS:
            raise UserError(f"--precision {settings.precision!r} is not one of {', '.join(PRECISIONS)}.")
        self.task = task
        self.settings = settings
        self.run_dir = Path(settings.run_dir)

    # -- public -------------------------------------------------------------------------------

    def run(self, dist_ctx: DistributedContext | None = None) -> TrainResult:
        own = dist_ctx is None
        dist_ctx = dist_ctx or setup_distributed(self.settings.device)
        try:
            return self._run(dist_ctx)
        finally:
            if own:
                dist_ctx.close()

    # -- internals ----------------------------------------------------------------------------

    def _resolve_precision(self, device: torch.device, main: bool) -> str:
        precision = self.settings.precision
        if device.type != "cuda" and precision != "fp32":
            if main:
                print(f"Note: --precision {precision} applies to CUDA only; training on {device} in fp32.",
                      file=sys.stderr)
            return "fp32"
        check_cuda_bf16(precision, device)
        return precision

    def _find_start(self, ctx: DistributedContext) -> Checkpoint | None:
        existing = list_checkpoints(self.run_dir)
        if self.settings.resume:
            if not existing:
                raise UserError(f"--resume: {self.run_dir} holds no checkpoint to resume from.",
                                hint="Check the --out folder, or drop --resume to start a new run.")
            ckpt = latest_checkpoint(self.run_dir)
        else:
            if existing:
                raise UserError(f"{self.run_dir} already holds a training run "
                                f"(checkpoints up to step {existing[-1][0]}).",
                                hint="Pass --resume to continue it, or choose another --out folder.")
            ckpt = None
        if ctx.enabled:
            # Every process must resume from the same step (the run folder must be shared storage).
            step = torch.tensor([ckpt.step if ckpt else -1], dtype=torch.float64, device=ctx.device)
            hi, lo = all_reduce_max(step, ctx), -all_reduce_max(-step, ctx)
            if hi.item() != lo.item():
                raise RunFailure(f"Processes found different checkpoints in {self.run_dir} "
                                 f"(steps {int(lo.item())} to {int(hi.item())}).",
                                 hint="The run folder must be on storage that every node sees.")
        return ckpt

    def _build_loader(self, sampler: EpochSampler, start_step: int, device: torch.device) -> Iterator:
        class _Keys:
            def __iter__(self_inner):
                return sampler.batches(start_step)

        workers = self.settings.workers
        loader = DataLoader(KeyedDataset(self.task.dataset, sampler.seed), batch_sampler=_Keys(),
                            num_workers=workers, pin_memory=device.type == "cuda",
                            worker_init_fn=_worker_init if workers > 0 else None)
        return iter(loader)

    def _write_run_record(self, seed: int, ctx: DistributedContext, precision: str) -> None:
        record = {
            "format": RUN_FORMAT,
            "task": self.task.name,
            "seed": seed,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "package_version": __version__,
            "command": " ".join(sys.argv),
            "world_size": ctx.world_size,
            "precision": precision,
            "metadata": self.task.run_metadata(),
            "recipe": self.settings.recipe,
        }
        write_text_atomic(self.run_dir / RUN_FILE, json.dumps(record, indent=1) + "\n")

    def _truncate_log(self, step: int) -> None:
        file = self.run_dir / LOG_FILE
        if not file.is_file():
            return
        kept = []
        for line in file.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        write_text_atomic(file, "".join(l + "\n" for l in kept))

    def _param_names(self) -> list[str]:
        names = {id(p): n for n, p in self.task.model.named_parameters()}
        out = []
        for group in self._optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in names:
                    raise RuntimeError("The optimizer holds a parameter that is not part of task.model.")
                out.append(names[id(p)])
        return out

    def _save(self, step: int, epoch_info: dict[str, Any], ctx: DistributedContext, precision: str,
              last_losses: dict[str, float]) -> Path | None:
        path = None
        if ctx.is_main:
            opt_tensors, opt_meta = optimizer_state_to_flat(self._optimizer, self._param_names())
            state = {
                **epoch_info,
                "seed": self._seed,
                "world_size": ctx.world_size,
                "global_batch": self.task.global_batch,
                "precision": precision,
                "schedule": {"kind": "epoch_lr_factor",
                             "lr_factor": self._lr_factor,
                             "lrs": [g["lr"] for g in self._optimizer.param_groups],
                             "initial_lrs": [g["initial_lr"] for g in self._optimizer.param_groups]},
                "rng": capture_rng_state(),
                "loss_scale": self._scaler.state_dict() if self._scaler.is_enabled() else None,
                "optimizer": opt_meta,
                "recipe": self.settings.recipe,
                "metadata": self.task.run_metadata(),
                "task": self.task.extra_state(),
                "last_losses": last_losses,
                "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            path = save_checkpoint(self.run_dir, step, model_state=self.task.model.state_dict(),
                                   optimizer_tensors=opt_tensors, state=state,
                                   ema_state=self.task.ema.state_dict() if self.task.ema else None,
                                   keep=self.settings.keep_checkpoints)
        ctx.barrier()
        return path

    def _run(self, ctx: DistributedContext) -> TrainResult:
        task, settings = self.task, self.settings
        main = ctx.is_main
        device = ctx.device
        precision = self._resolve_precision(device, main)
        ckpt = self._find_start(ctx)

        # Seed: recorded on resume; --seed may repeat it but not change it.
        if ckpt is not None:
            recorded_seed = int(ckpt.state["seed"])
            if settings.seed is not None and settings.seed != recorded_seed:
                raise UserError(f"--seed {settings.seed}: the run in {self.run_dir} was started with seed "
                                f"{recorded_seed}; resuming with another would change its data order.",
                                hint="Drop --seed when resuming.")
            seed = recorded_seed
        else:
            seed = 0 if settings.seed is None else settings.seed
        self._seed = seed
        _seed_step(seed, -1, 0)   # the same initial weights on every process

        task.setup(device)
        start_step = 0
        if ckpt is not None:
            diffs = _dict_diff(ckpt.state.get("recipe") or {}, settings.recipe)
            if diffs:
                raise UserError(f"Cannot resume {self.run_dir}: the recipe differs from the one the run "
                                "was started with:\n  " + "\n  ".join(diffs[:10]),
                                hint="Resume with the original recipe (it is recorded in run.json).")
            task.check_resume(ckpt.state.get("metadata") or {})
            load_state_checked(task.model, ckpt.model_tensors(), source=str(ckpt.path / "model.safetensors"))
            ema_state = ckpt.ema_tensors()
            if task.ema is not None:
                if ema_state is None:
                    raise RunFailure(f"Checkpoint {ckpt.path} has no ema.safetensors but this run keeps an EMA.")
                task.ema.load_state_dict(ema_state)
            task.load_extra_state(ckpt.state.get("task") or {})
            start_step = ckpt.step

        sampler = EpochSampler(len(task.dataset), task.global_batch, seed, ctx.rank, ctx.world_size)
        spe = sampler.steps_per_epoch
        total_steps = task.max_epochs * spe
        if settings.max_steps is not None:
            total_steps = min(total_steps, settings.max_steps)

        if ctx.enabled and settings.sync_batchnorm:
            synchronize_batchnorm(task.train_module, device)
        task.train_module.train()

        self._optimizer = task.build_optimizer()
        for group in self._optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        if ckpt is not None:
            optimizer_state_from_flat(self._optimizer, ckpt.optimizer_tensors(), ckpt.state["optimizer"],
                                      self._param_names(), source=str(ckpt.path))
            if self._scaler.is_enabled() and ckpt.state.get("loss_scale"):
                self._scaler.load_state_dict(ckpt.state["loss_scale"])
            restore_rng_state(ckpt.state["rng"])
        self._lr_factor = task.lr_factor(start_step // spe)

        if ctx.enabled:
            module = DistributedDataParallel(
                task.train_module, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=settings.find_unused_parameters)
        else:
            module = task.train_module

        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if ckpt is None:
                self._write_run_record(seed, ctx, precision)
                (self.run_dir / LOG_FILE).write_text("")
            else:
                self._truncate_log(start_step)
            if settings.preview_every:
                (self.run_dir / PREVIEWS_DIR).mkdir(exist_ok=True)
        ctx.barrier()

        autocast = precision_autocast(device, precision)
        params = [p for g in self._optimizer.param_groups for p in g["params"]]
        last_checkpoint = ckpt.path if ckpt is not None else None
        last_losses: dict[str, float] = dict(ckpt.state.get("last_losses") or {}) if ckpt else {}
        stop = _StopRequest(announce=main)
        progress = Progress(total_steps, desc=f"{task.name}", unit="step", initial=start_step,
                            enabled=main and settings.show_progress)
        data = self._build_loader(sampler, start_step, device) if start_step < total_steps else None
        step = start_step
        t_start = time.monotonic()
        stop.install()
        try:
            while step < total_steps:
                batch = _to_device(next(data), device)
                epoch = step // spe
                sctx = StepContext(step=step, epoch=epoch, rank=ctx.rank, world_size=ctx.world_size,
                                   global_batch=task.global_batch, local_batch=sampler.local_batch,
                                   device=device, seed=seed)
                self._lr_factor = task.lr_factor(epoch)
                for group in self._optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * self._lr_factor
                _seed_step(seed, step, ctx.rank)
                self._optimizer.zero_grad(set_to_none=True)
                with autocast:
                    output = task.training_step(module, batch, sctx)
                terms = {k: v.float() for k, v in output.losses.items()}
                loss = sum(terms.values())
                nonfinite = torch.tensor([0.0 if bool(torch.isfinite(loss)) else 1.0], device=device)
                if all_reduce_max(nonfinite, ctx).item() > 0:
                    self._fail_nonfinite("loss", step + 1, terms, last_checkpoint)

                grad_norm = None
                if self._scaler.is_enabled():
                    self._scaler.scale(loss).backward()
                    if settings.max_grad_norm is not None:
                        self._scaler.unscale_(self._optimizer)
                        grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                    self._scaler.step(self._optimizer)
                    self._scaler.update()
                else:
                    loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(
                        params, settings.max_grad_norm if settings.max_grad_norm is not None else math.inf)
                    if not bool(torch.isfinite(grad_norm)):
                        self._fail_nonfinite("gradient", step + 1, terms, last_checkpoint)
                    self._optimizer.step()
                step += 1
                if task.ema is not None:
                    task.ema.update(task.model, step)
                progress.update(1)

                if step % settings.log_every == 0 or step == total_steps or step == start_step + 1:
                    names = list(terms)
                    values = all_reduce_mean(torch.stack([loss.detach()] + [terms[n].detach() for n in names]), ctx)
                    values = values.cpu().tolist()
                    last_losses = {"loss": values[0], **dict(zip(names, values[1:]))}
                    if main:
                        elapsed = time.monotonic() - t_start
                        rate = (step - start_step) / max(elapsed, 1e-9)
                        record = {"step": step, "epoch": epoch, "lr": self._optimizer.param_groups[0]["lr"],
                                  **last_losses,
                                  "grad_norm": None if grad_norm is None else float(grad_norm),
                                  "steps_per_s": rate, "samples_per_s": rate * task.global_batch,
                                  "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
                        if self._scaler.is_enabled():
                            record["loss_scale"] = float(self._scaler.get_scale())
                        with open(self.run_dir / LOG_FILE, "a") as fh:
                            fh.write(json.dumps(record) + "\n")
                        progress.set_postfix({"loss": f"{values[0]:.4f}",
                                              "lr": f"{self._optimizer.param_groups[0]['lr']:.1e}"})

                if main and settings.preview_every and (step % settings.preview_every == 0 or step == total_steps):
                    was_training = task.model.training
                    with torch.no_grad():
                        task.write_preview(batch, output, sctx, self.run_dir / PREVIEWS_DIR)
                    task.model.train(was_training)
                del output, terms, loss

                epoch_info = {"epoch": step // spe, "epoch_step": step % spe, "steps_per_epoch": spe,
                              "items_per_epoch": sampler.num_items, "total_steps": total_steps}
                # Every process must agree to stop (a signal may reach only some of them).
                stopping = torch.tensor([1.0 if stop.signum is not None else 0.0], device=device)
                if all_reduce_max(stopping, ctx).item() > 0:
                    last_checkpoint = self._save(step, epoch_info, ctx, precision, last_losses)
                    raise TrainingInterrupted(stop.signum or signal.SIGINT, last_checkpoint if main else None, step)
                if step % settings.checkpoint_every == 0 or step == total_steps:
                    last_checkpoint = self._save(step, epoch_info, ctx, precision, last_losses)
        finally:
            stop.restore()
            progress.close()
            del data

        final = list_checkpoints(self.run_dir)
        return TrainResult(run_dir=self.run_dir, step=step, total_steps=total_steps,
                           checkpoint=final[-1][1] if final else None, losses=last_losses, seed=seed,
                           is_main=main, world_size=ctx.world_size, precision=precision)

    def _fail_nonfinite(self, what: str, step: int, terms: dict[str, torch.Tensor],
                        last_checkpoint: Path | None) -> None:
        shown = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        where = (f"The last good checkpoint is {last_checkpoint} (continue from it with --resume)."
                 if last_checkpoint else "No checkpoint had been written yet.")
        raise RunFailure(
            f"The {what} became NaN or infinite at step {step} ({shown}). Training stopped without "
            f"saving this state. {where}",
            hint="Try a lower learning rate, --precision fp32 (or bf16 instead of fp16), and check "
                 "the training data for broken frames.")
