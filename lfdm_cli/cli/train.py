"""`lfdm train lfae|dm`: train the two stages (both also run under `torchrun`)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from lfdm_cli.cli.common import DeviceOption, JsonOption, err, out, print_json

if TYPE_CHECKING:  # imported lazily at run time: the CLI starts without torch
    from lfdm_cli.training.loop import TrainingInterrupted, TrainResult

train_app = typer.Typer(
    help="Train a model: `lfae` (stage one, the latent flow auto-encoder) and `dm` (stage two, the "
         "flow diffusion model). Runs unchanged under `torchrun --nproc_per_node N` "
         "(the recipe's batch size is then the global batch).",
    no_args_is_help=True)

# Options shared by every training command.
RecipeOption = typer.Option(..., "--recipe", "-r", help="Recipe name (see `lfdm recipes list`) or YAML file.")
DataOption = typer.Option(..., "--data", "-d", help="Dataset folder (made by `lfdm preprocess` or `lfdm synth faces`).")
OutOption = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, log.jsonl, previews and the final model/.")
ResumeOption = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint, exactly.")
MaxStepsOption = typer.Option(None, "--max-steps", min=1,
                              help="Stop after this many optimizer steps in total (default: the recipe's epochs).")
PrecisionOption = typer.Option("fp32", "--precision",
                               help="fp32, bf16 or fp16 (mixed precision with autocast; CUDA only, CPU runs fp32).")
SeedOption = typer.Option(None, "--seed", help="Seed of weights, data order and augmentation (default 0; "
                                                "a resumed run keeps its own).")
WorkersOption = typer.Option(None, "--workers", min=0, help="Data-loading processes (default: the recipe's).")
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def check_precision(precision: str) -> str:
    from lfdm_cli.errors import UserError

    value = precision.lower()
    from lfdm_cli.precision import PRECISIONS

    if value not in PRECISIONS:
        raise UserError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    return value


def resume_command() -> str:
    """The command line that started this process, with --resume."""
    args = [a for a in sys.argv[1:] if a != "--resume"]
    return " ".join(["lfdm", *map(shlex.quote, args), "--resume"])


def exit_interrupted(exc: "TrainingInterrupted") -> None:
    """After Ctrl-C (or SIGTERM) saved a checkpoint: say where and how to continue; exit 128+signal."""
    if exc.checkpoint is not None:
        err.print(f"Interrupted at step {exc.step}; saved checkpoint {exc.checkpoint}.", markup=False, highlight=False)
        err.print(f"Continue with: {resume_command()}", markup=False, highlight=False)
    raise typer.Exit(exc.exit_code)


def report(result: "TrainResult", model_dir: Path | None, json_out: bool, extra: dict | None = None) -> None:
    """Rank 0 prints the result: the model folder on stdout (or a JSON summary)."""
    if not result.is_main:
        return
    summary = {"run_dir": str(result.run_dir), "model": str(model_dir) if model_dir else None,
               "steps": result.step, "total_steps": result.total_steps,
               "checkpoint": str(result.checkpoint) if result.checkpoint else None,
               "losses": result.losses, "seed": result.seed, "precision": result.precision,
               "processes": result.world_size, **(extra or {})}
    if json_out:
        print_json(summary)
        return
    loss = result.losses.get("loss")
    err.print(f"Trained {result.step}/{result.total_steps} steps" + (f", last loss {loss:.4f}" if loss is not None else "")
              + f"; run folder {result.run_dir}.", markup=False, highlight=False)
    if model_dir is not None:
        out.print(str(model_dir), markup=False, highlight=False)


@train_app.command("lfae")
def lfae_cmd(
    recipe: str = RecipeOption,
    data: Path = DataOption,
    out_dir: Path = OutOption,
    resume: bool = ResumeOption,
    max_steps: Optional[int] = MaxStepsOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    vgg_weights: Optional[Path] = typer.Option(
        None, "--vgg-weights",
        help="torchvision's VGG19 ImageNet weights (vgg19-dcbb9e9d.pth) for the perceptual loss "
             "(default: the torch hub cache). Without them training falls back to multi-scale L1 + SSIM "
             "and records that."),
    seed: Optional[int] = SeedOption,
    workers: Optional[int] = WorkersOption,
    quiet: bool = QuietOption,
    json_out: bool = JsonOption,
) -> None:
    """Train stage one (the latent flow auto-encoder) on frame pairs of a dataset.

    Example: lfdm train lfae --recipe mug128 --data data/mug128 --out runs/mug_lfae

    Ctrl-C saves a checkpoint (exit 130); continue with the same command plus --resume.
    Several GPUs: torchrun --nproc_per_node 4 -m lfdm_cli train lfae --recipe mug128 ...
    """
    from lfdm_cli.training.lfae_trainer import MODEL_DIR, train_lfae
    from lfdm_cli.training.loop import TrainingInterrupted

    try:
        result = train_lfae(recipe, data, out_dir, resume=resume, max_steps=max_steps, device=device,
                            precision=check_precision(precision), vgg_weights=vgg_weights, seed=seed,
                            workers=workers, show_progress=not quiet)
    except TrainingInterrupted as exc:
        exit_interrupted(exc)
        return
    from lfdm_cli.training.loop import read_run_record

    record = read_run_record(out_dir) if result.is_main else None
    extra = {"perceptual_loss": (record or {}).get("metadata", {}).get("perceptual_loss")}
    report(result, out_dir / MODEL_DIR, json_out, extra)


@train_app.command("dm")
def dm_cmd(
    recipe: str = RecipeOption,
    data: Path = DataOption,
    lfae: Path = typer.Option(..., "--lfae", "-l",
                              help="Stage-one model folder (RUN_DIR/model from `lfdm train lfae`, or `lfdm convert lfae`)."),
    out_dir: Path = OutOption,
    resume: bool = ResumeOption,
    max_steps: Optional[int] = MaxStepsOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    seed: Optional[int] = SeedOption,
    flow_cache: Optional[bool] = typer.Option(
        None, "--flow-cache/--no-flow-cache",
        help="Compute the flow targets once into a cache and reuse them (with colour jitter: from the "
             "unjittered frames), or with the frozen stage one at every step from the jittered frames, as "
             "the reference (default: the recipe's dm.train.flow_cache)."),
    flow_cache_dir: Optional[Path] = typer.Option(
        None, "--flow-cache-dir",
        help="Where the flow cache lives (default OUT/flow_cache); runs on the same data and stage-one "
             "model can share one."),
    embeddings: Optional[Path] = typer.Option(
        None, "--embeddings",
        help="Precomputed condition embeddings (.safetensors or .json, one vector per class name) "
             "instead of running the recipe's text encoder."),
    bert_dir: Optional[Path] = typer.Option(
        None, "--bert-dir", help="Folder with bert-base-cased's files, for recipes whose conditions use 'bert'."),
    workers: Optional[int] = WorkersOption,
    quiet: bool = QuietOption,
    json_out: bool = JsonOption,
) -> None:
    """Train stage two (the flow diffusion model) on clips of a dataset, with a frozen stage one.

    Example: lfdm train dm --recipe mug128 --data data/mug128 --lfae runs/mug_lfae/model --out runs/mug_dm

    The run ends with OUT/model/, a complete model folder (stage one copied in) for `lfdm generate`.
    Ctrl-C saves a checkpoint (exit 130); continue with the same command plus --resume.
    Several GPUs: torchrun --nproc_per_node 4 -m lfdm_cli train dm --recipe mug128 ...
    """
    from lfdm_cli.training.dm_trainer import MODEL_DIR, train_dm
    from lfdm_cli.training.loop import TrainingInterrupted

    try:
        result = train_dm(recipe, data, lfae, out_dir, resume=resume, max_steps=max_steps, device=device,
                          precision=check_precision(precision), seed=seed,
                          flow_cache=flow_cache, flow_cache_dir=flow_cache_dir,
                          workers=workers, embeddings=embeddings, bert_dir=bert_dir, show_progress=not quiet)
    except TrainingInterrupted as exc:
        exit_interrupted(exc)
        return
    from lfdm_cli.training.loop import read_run_record

    record = read_run_record(out_dir) if result.is_main else None
    extra = {"flow_targets": (record or {}).get("metadata", {}).get("flow_targets")}
    report(result, out_dir / MODEL_DIR, json_out, extra)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
