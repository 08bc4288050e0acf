"""`lfdm demo`: the bundled model animates a bundled example face with every condition."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from lfdm_cli.cli.common import DeviceOption, err, out
from lfdm_cli.errors import UserError


def example_images(model_dir: Path) -> list[Path]:
    folder = model_dir / "examples"
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if folder.is_dir() else []


def demo(
    out_dir: Path = typer.Option(Path("lfdm-demo"), "--out-dir", "-o", help="Where the videos go."),
    model: Optional[Path] = typer.Option(None, "--model", "-m",
                                         help="Model folder with an examples/ folder (default: the bundled model)."),
    example: int = typer.Option(0, "--example", min=0, help="Which bundled example image to animate."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampler steps (default: the model's)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the first video."),
    device: str = DeviceOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Animate a bundled example face with every condition of the bundled model (no download).

    Writes one mp4 per condition (each with its JSON sidecar) and all_conditions.gif, a labelled
    grid of all of them, into ./lfdm-demo/, and prints where they are. Running it again replaces
    them.

    Example: lfdm demo
    """
    from lfdm_cli.cli.generate import Job, RunOptions, file_sha256, load_pipeline, resolve_settings, run_jobs, \
        sidecar_path, slug
    from lfdm_cli.io import make_grid, read_video, write_video

    start = time.perf_counter()
    out_dir = out_dir.resolve()  # print where the files are wherever the user runs it from
    pipeline = load_pipeline(model, device, True)
    images = example_images(pipeline.model_path)
    if not images:
        raise UserError(f"The model folder {pipeline.model_path} has no example images (examples/*.png).",
                        hint="Use `lfdm generate IMAGE --condition NAME --model DIR` with your own image.")
    if example >= len(images):
        raise UserError(f"--example {example}: the model has {len(images)} example image(s) (0..{len(images) - 1}).")
    image = images[example]
    settings = resolve_settings(pipeline, {"steps": steps} if steps else {})
    opts = RunOptions(fit=pipeline.fit, fps=float(pipeline.fps), keep_input_frame=False, save_flow=False,
                      overwrite=True, chunk_size=None, batch_size=len(pipeline.conditions), progress=not quiet,
                      quiet=quiet)
    digest = file_sha256(image)
    jobs = []
    for i, condition in enumerate(pipeline.conditions):
        target = out_dir / f"{slug(image.stem)}_{slug(condition)}.mp4"
        jobs.append(Job(image=image, condition=condition, seed=seed + i, frames=pipeline.default_frames,
                        settings=settings, output=target, kind="mp4", sidecar=sidecar_path(target, "mp4"),
                        flow_output=None, image_sha256=digest))
    out_dir.mkdir(parents=True, exist_ok=True)
    run_jobs(pipeline, jobs, opts, strict=True)
    videos = [read_video(job.output) for job in jobs]
    grid = out_dir / "all_conditions.gif"
    write_video(grid, make_grid(videos, captions=[job.condition for job in jobs]), fps=pipeline.fps)
    for job in jobs:
        out.print(str(job.output), markup=False, highlight=False)
    out.print(str(grid), markup=False, highlight=False)
    if not quiet:
        err.print(f"Animated {image.name} with {len(jobs)} conditions ({settings.sampler}, {settings.steps} steps) "
                  f"in {time.perf_counter() - start:.1f}s. Videos are in {out_dir}/; the grid is {grid}.",
                  highlight=False)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
