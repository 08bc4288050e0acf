"""`lfdm generate`: videos from still images, one at a time or from a manifest of jobs.

Single: `lfdm generate IMAGE --condition NAME [-o out.mp4]`. Batch: `lfdm generate --manifest
jobs.csv --out-dir DIR`: rows with the same settings share device batches; a row counts as done
when its output and a sidecar recording the same job exist, so re-running finishes only what is
missing. Every output gets a JSON sidecar (`out.json` beside `out.mp4`, `frames.json` beside a
`frames/` folder), the layout `lfdm evaluate` reads conditions from.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from lfdm_cli import __version__
from lfdm_cli.cli.common import DeviceOption, GenPrecisionOption, err, out, print_json_line
from lfdm_cli.errors import LfdmError, RunFailure, UserError, unknown_name_error
from lfdm_cli.hashing import file_sha256

SIDECAR_FORMAT = "lfdm-generate/1"
FORMATS = ("mp4", "gif", "png")
MANIFEST_COLUMNS = ("image", "condition", "seed", "frames", "steps", "guidance", "sampler", "eta", "output")
_COLUMN_ALIASES = {"output_name": "output", "name": "output", "out": "output", "img": "image",
                   "class": "condition", "label": "condition"}

# ---------------------------------------------------------------------------------------------
# Options shared with `lfdm chain`

ModelOption = typer.Option(None, "--model", "-m",
                           help="Model folder (model.yaml + *.safetensors). Default: $LFDM_MODEL, else the "
                                "bundled model in weights/.")
FramesOption = typer.Option(None, "--frames", "-k", min=1, help="Frames to generate (default: the model's clip length).")
SamplerOption = typer.Option(None, "--sampler", help="ddim, dpmpp (DPM-Solver++ 2M) or ddpm (ancestral, all T steps; "
                                                     "the paper's sampler). Default: the model's, else ddim.")
StepsOption = typer.Option(None, "--steps", min=1, help="Sampler steps for ddim/dpmpp (default: the model's, else 10).")
EtaOption = typer.Option(None, "--eta", min=0.0, help="DDIM noise (0 deterministic, 1 the authors' setting).")
GuidanceOption = typer.Option(None, "--guidance", "-g",
                              help="Classifier-free guidance scale (1 = conditional model alone, one pass per step; "
                                   "the authors sample with 1).")
SpacingOption = typer.Option(None, "--ddim-spacing",
                             help="DDIM timesteps: reference (default: the authors' spacing and coefficients; "
                                  "with --eta 1 it computes what their code computes) or trailing (textbook).")
FpsOption = typer.Option(None, "--fps", help="Frames per second of the written video (default: the model's).")
FitOption = typer.Option(None, "--fit", help="How the image becomes the model's square frame: pad (keep aspect, black "
                                             "bars: how the training data was prepared), crop or stretch. Default: the "
                                             "model's setting.")
EmaOption = typer.Option(True, "--ema/--no-ema", help="Use the diffusion model's EMA weights when the folder has them.")
OverwriteOption = typer.Option(False, "--overwrite", help="Replace outputs that already exist.")
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars or messages (errors still print).")
DecodeChunkOption = typer.Option(None, "--decode-chunk", min=1,
                                 help="Decode at most this many frames at once (default: all on a GPU, "
                                      "a few at a time on the CPU, which measured faster there).")


def sampling_overrides(sampler, steps, eta, guidance, ddim_spacing) -> dict[str, Any]:
    values = {"sampler": sampler, "steps": steps, "eta": eta, "guidance": guidance, "ddim_spacing": ddim_spacing}
    values = {k: v for k, v in values.items() if v is not None}
    if "sampler" in values:
        values["sampler"] = str(values["sampler"]).lower()
    return values


def resolve_settings(pipeline, overrides: dict[str, Any]):
    base = pipeline.default_settings()
    return replace(base, **overrides).resolved(pipeline.timesteps)


def check_fit(fit: str | None) -> str | None:
    if fit is not None and fit not in ("pad", "crop", "stretch"):
        raise unknown_name_error("--fit mode", fit, ("pad", "crop", "stretch"))
    return fit


def check_fps(fps: float | None) -> None:
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise UserError(f"--fps must be a positive number, got {fps}.")


def load_pipeline(model: Path | None, device: str, ema: bool, precision: str = "fp32", compile: bool = False):
    from lfdm_cli.device import resolve_device
    from lfdm_cli.pipeline import GenerationPipeline, check_precision

    dev = resolve_device(device)
    check_precision(precision, dev)  # before loading any weights
    return GenerationPipeline.from_folder(model, device=dev, ema=ema, precision=precision, compile=compile)


# ---------------------------------------------------------------------------------------------
# Output paths and sidecars


def output_kind(path: Path | str) -> str:
    """mp4, gif or frames, with the same rules (and error) as the writer that will write it."""
    from lfdm_cli.io.video import output_kind as video_output_kind

    return video_output_kind(path)


def sidecar_path(path: Path, kind: str) -> Path:
    return path.with_name(path.name + ".json") if kind == "frames" else path.with_suffix(".json")


def flow_path(path: Path, kind: str, folder: Path | None = None) -> Path:
    """Where the --save-flow side-by-side video goes: beside the output (`out_flow.mp4`), or in
    `folder` (batch jobs keep them out of the videos folder, which `lfdm evaluate` reads)."""
    name = path.name + "_flow" if kind == "frames" else f"{path.stem}_flow{path.suffix}"
    return (folder or path.parent) / name


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"


def device_info(device) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    if getattr(device, "type", "") == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["threads"] = torch.get_num_threads()
    return info


def model_info(pipeline) -> dict[str, Any]:
    return {"path": str(Path(pipeline.model_path).resolve()) if pipeline.model_path else None,
            "digest": pipeline.digest, "ema": pipeline.ema}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_sidecar(path: Path, data: dict[str, Any]) -> None:
    from lfdm_cli.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------
# The --save-flow panel


def _upscale(frames: np.ndarray, size: int) -> np.ndarray:
    from lfdm_cli.io import resize_frames

    h = frames.shape[1]
    if size % h == 0:
        f = size // h
        return np.repeat(np.repeat(frames, f, axis=1), f, axis=2)
    return resize_frames(frames, size, size)


def flow_panel(image, video, warped, flow, occlusion) -> np.ndarray:
    """uint8 (K, H', W', 3): [input | generated | warped input | flow colour wheel | occlusion].

    image (3, S, S), video/warped (K, 3, S, S) floats in [0, 1]; flow (K, h, w, 2) sampling
    grids (drawn as displacements, Middlebury colours, one scale for the whole clip); occlusion
    (K, 1, h, w) (white = visible). Flow and occlusion are enlarged to S with nearest neighbours.
    """
    from lfdm_cli.io import grid_to_color, make_grid, occlusion_to_gray

    size = video.shape[-1]
    flow_rgb = _upscale(grid_to_color(flow.numpy()), size)
    occ_rgb = _upscale(occlusion_to_gray(occlusion.numpy()), size)
    return make_grid([image, video, warped, flow_rgb, occ_rgb],
                     captions=["input", "generated", "warped input", "flow", "occlusion"])


# ---------------------------------------------------------------------------------------------
# Jobs


@dataclass
class Job:
    """One video to make. `row`/`line` locate a manifest row (None for single runs)."""

    image: Path
    condition: str
    seed: int
    frames: int
    settings: Any  # SamplingSettings, resolved
    output: Path | None  # None only for manifest rows that could not be read
    kind: str
    sidecar: Path | None
    flow_output: Path | None
    row: int | None = None
    line: int | None = None
    image_sha256: str | None = None
    status: str = "pending"
    error: str | None = None
    exit_code: int = 0

    def batch_key(self) -> tuple:
        s = self.settings
        return (self.frames, s.sampler, s.steps, s.eta, s.guidance, s.ddim_spacing)

    def key(self, common: dict[str, Any]) -> dict[str, Any]:
        """What makes two runs the same job (compared with a sidecar's `job` entry)."""
        return {"image_sha256": self.image_sha256, "condition": self.condition, "seed": self.seed,
                "frames": self.frames, **self.settings.to_dict(), **common}

    def report(self) -> dict[str, Any]:
        data = {"row": self.row, "line": self.line, "status": self.status, "image": str(self.image),
                "condition": self.condition, "seed": self.seed,
                "output": str(self.output) if self.output is not None else None, "error": self.error}
        if self.row is None:
            data.pop("row")
            data.pop("line")
        return data


@dataclass
class RunOptions:
    fit: str
    fps: float
    keep_input_frame: bool
    save_flow: bool
    overwrite: bool
    chunk_size: int | None
    batch_size: int
    progress: bool
    quiet: bool

    def common_key(self, pipeline) -> dict[str, Any]:
        return {"fit": self.fit, "fps": self.fps, "keep_input_frame": self.keep_input_frame,
                "save_flow": self.save_flow, "model_digest": pipeline.digest, "ema": pipeline.ema,
                "precision": pipeline.precision}


def _fail(job: Job, exc: BaseException | str, code: int = 2) -> None:
    job.status = "failed"
    if isinstance(exc, LfdmError):
        job.error = str(exc).replace("\n", " ")
        code = exc.exit_code
    else:
        job.error = str(exc)
    job.exit_code = code


def write_job_outputs(job: Job, index: int, result, image, pipeline, opts: RunOptions,
                      batch: dict[str, Any]) -> dict[str, Any]:
    """Write one video (and its flow panel) atomically, then its sidecar; returns the sidecar."""
    import torch

    from lfdm_cli.io import write_video

    t0 = time.perf_counter()
    if job.sidecar.exists():
        # A stale sidecar must never describe the new video if we stop half way.
        job.sidecar.unlink()
    frames = result.videos[index]
    if opts.keep_input_frame:
        frames = torch.cat([image[None].cpu(), frames])
    write_video(job.output, frames, fps=opts.fps)
    if job.flow_output is not None:
        job.flow_output.parent.mkdir(parents=True, exist_ok=True)
        panel = flow_panel(image.cpu(), result.videos[index], result.warped[index], result.flows[index],
                           result.occlusions[index])
        write_video(job.flow_output, panel, fps=opts.fps)
    s = job.settings
    sidecar = {
        "format": SIDECAR_FORMAT,
        "output": str(job.output.resolve()),
        "flow_output": str(job.flow_output.resolve()) if job.flow_output else None,
        "source_image": str(job.image.resolve()),
        "image_sha256": job.image_sha256,
        "condition": job.condition,
        "seed": job.seed,
        "sampler": s.sampler, "steps": s.steps, "eta": s.eta, "ddim_spacing": s.ddim_spacing,
        "guidance": s.guidance,
        "frames": job.frames,
        "frames_written": job.frames + (1 if opts.keep_input_frame else 0),
        "frame0": "the input image (--keep-input-frame), then the model's frames" if opts.keep_input_frame
        else "the model's own frame 0 (generated, close to the input image)",
        "fps": opts.fps, "fit": opts.fit, "resolution": pipeline.resolution,
        "model": model_info(pipeline),
        "timings": {**{k: round(v, 4) for k, v in result.timings.items()}, "batch_size": batch["size"],
                    "load_model_s": round(batch.get("load_model_s", 0.0), 4),
                    "write_s": round(time.perf_counter() - t0, 4)},
        **device_info(pipeline.device),
        "precision": pipeline.precision,
        "compiled": pipeline.compiled,
        "lfdm_version": __version__,
        "created": now_iso(),
        "job": job.key(opts.common_key(pipeline)),
    }
    if job.row is not None:
        sidecar["manifest_row"] = job.row
    write_sidecar(job.sidecar, sidecar)
    return sidecar


def run_jobs(pipeline, jobs: list[Job], opts: RunOptions, *, strict: bool, load_s: float = 0.0,
             on_finish=None) -> None:
    """Generate every pending job, batching jobs with equal settings. With `strict` the first
    error propagates (single runs); otherwise it marks the job(s) failed and goes on."""
    import torch

    from lfdm_cli.io import load_image
    from lfdm_cli.progress import Progress

    pending = [j for j in jobs if j.status == "pending"]
    groups: dict[tuple, list[Job]] = {}
    for job in pending:
        groups.setdefault(job.batch_key(), []).append(job)
    bar = Progress(len(pending), "videos", unit="video", enabled=opts.progress and not strict and len(pending) > 1)
    try:
        for group in groups.values():
            for start in range(0, len(group), opts.batch_size):
                chunk = group[start:start + opts.batch_size]
                arrays, ready = [], []
                for job in chunk:
                    try:
                        arrays.append(load_image(job.image))
                        ready.append(job)
                    except LfdmError as exc:
                        if strict:
                            raise
                        _fail(job, exc)
                        bar.update(1)
                        if on_finish:
                            on_finish(job)
                if not ready:
                    continue
                first = ready[0]
                try:
                    images = pipeline.prepare_images(arrays, opts.fit)
                    result = pipeline.generate(
                        images, [j.condition for j in ready], frames=first.frames, seeds=[j.seed for j in ready],
                        sampler=first.settings.sampler, steps=first.settings.steps, eta=first.settings.eta,
                        guidance=first.settings.guidance, ddim_spacing=first.settings.ddim_spacing,
                        chunk_size=opts.chunk_size, progress=opts.progress and strict)
                except (LfdmError, RuntimeError, ValueError) as exc:
                    if strict:
                        if isinstance(exc, LfdmError):
                            raise
                        raise RunFailure(f"Generation failed: {exc}") from exc
                    for job in ready:
                        _fail(job, exc, code=1)
                        bar.update(1)
                        if on_finish:
                            on_finish(job)
                    continue
                batch = {"size": len(ready), "load_model_s": load_s}
                for index, job in enumerate(ready):
                    try:
                        write_job_outputs(job, index, result, images[index], pipeline, opts, batch)
                        job.status = "done"
                    except (LfdmError, OSError, ValueError) as exc:
                        if strict:
                            raise
                        _fail(job, exc, code=1)
                    bar.update(1)
                    if on_finish:
                        on_finish(job)
                del result
                if pipeline.device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# Manifests


@dataclass
class ManifestRow:
    number: int  # 1-based data row
    line: int
    values: dict[str, Any]
    error: str | None = None


def _normalise_column(name: str) -> str:
    key = re.sub(r"[\s-]+", "_", str(name).strip().lower())
    return _COLUMN_ALIASES.get(key, key)


def _check_columns(columns: list[str], path: Path) -> None:
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    if unknown:
        raise unknown_name_error("manifest column", unknown[0], MANIFEST_COLUMNS, where=str(path))


def read_manifest(path: Path) -> list[ManifestRow]:
    """Rows of a .csv (header line required) or .jsonl (one JSON object per line) manifest."""
    if not path.is_file():
        raise UserError(f"Manifest not found: {path}")
    suffix = path.suffix.lower()
    rows: list[ManifestRow] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Could not read manifest {path}: {exc}") from None
    if suffix == ".csv":
        reader = csv.reader(text.splitlines())
        header = None
        for line_no, record in enumerate(reader, 1):
            if not record or all(not c.strip() for c in record) or record[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [_normalise_column(c) for c in record]
                _check_columns(header, path)
                if "image" not in header:
                    raise UserError(f"Manifest {path} has no 'image' column.",
                                    hint=f"The first line names the columns: {', '.join(MANIFEST_COLUMNS)}.")
                continue
            number = len(rows) + 1
            if len(record) > len(header):
                rows.append(ManifestRow(number, line_no, {}, f"has {len(record)} fields but the header has {len(header)}"))
                continue
            values = {k: v.strip() for k, v in zip(header, record) if v.strip() != ""}
            rows.append(ManifestRow(number, line_no, values))
        if header is None:
            raise UserError(f"Manifest {path} is empty.")
    elif suffix in (".jsonl", ".ndjson"):
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            number = len(rows) + 1
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append(ManifestRow(number, line_no, {}, f"is not valid JSON ({exc.msg})"))
                continue
            if not isinstance(data, dict):
                rows.append(ManifestRow(number, line_no, {}, "is not a JSON object"))
                continue
            values = {_normalise_column(k): v for k, v in data.items() if v is not None and v != ""}
            _check_columns(list(values), path)
            rows.append(ManifestRow(number, line_no, values))
    else:
        raise UserError(f"Unsupported manifest {path.name}: use .csv or .jsonl.")
    if not rows:
        raise UserError(f"Manifest {path} has no rows.")
    return rows


def _as_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        number = int(value)
    else:
        raise UserError(f"{name} must be a whole number, got {value!r}.")
    if number < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {number}.")
    return number


def _as_float(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}.") from None
    if not np.isfinite(number):
        raise UserError(f"{name} must be finite, got {value!r}.")
    return number


def job_from_row(row: ManifestRow, *, pipeline, base_dir: Path, out_dir: Path, defaults: dict[str, Any],
                 fmt: str, save_flow: bool) -> Job:
    """A Job for a manifest row, or UserError saying what is wrong with the row."""
    v = row.values
    if "image" not in v:
        raise UserError("no image given.")
    image = Path(str(v["image"])).expanduser()
    if not image.is_absolute():
        image = base_dir / image
    condition = str(v.get("condition", defaults.get("condition") or ""))
    if not condition:
        raise UserError("no condition given (add a 'condition' column or pass --condition).")
    pipeline.check_conditions([condition])
    seed = _as_int(v.get("seed", defaults["seed"]), "seed", 0)
    frames = _as_int(v.get("frames", defaults.get("frames") or pipeline.default_frames), "frames", 1)
    overrides = dict(defaults["sampling"])
    if "sampler" in v:
        overrides["sampler"] = str(v["sampler"]).strip().lower()
    if "steps" in v:
        overrides["steps"] = _as_int(v["steps"], "steps", 1)
    if "guidance" in v:
        overrides["guidance"] = _as_float(v["guidance"], "guidance")
    if "eta" in v:
        overrides["eta"] = _as_float(v["eta"], "eta")
    settings = resolve_settings(pipeline, overrides)
    suffix = "" if fmt == "png" else f".{fmt}"
    if "output" in v:
        name = str(v["output"]).strip()
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise UserError(f"output name {name!r} must be a relative path inside --out-dir.")
        if not Path(name).suffix and not name.endswith("/"):
            name += suffix
    else:
        name = f"{slug(image.stem)}_{slug(condition)}_s{seed}{suffix}"
    output = out_dir / name
    kind = "frames" if name.endswith("/") else output_kind(output)
    if not image.is_file():
        raise UserError(f"image not found: {image}" if not image.exists() else f"{image} is not a file.")
    return Job(image=image, condition=condition, seed=seed, frames=frames, settings=settings, output=output,
               kind=kind, sidecar=sidecar_path(output, kind),
               flow_output=flow_path(output, kind, out_dir / "flow") if save_flow else None,
               row=row.number, line=row.line, image_sha256=file_sha256(image))


def _summary(jobs: list[Job], manifest: Path, elapsed: float) -> None:
    from rich.table import Table

    counts = {s: sum(1 for j in jobs if j.status == s) for s in ("done", "skipped", "failed")}
    table = Table(title=f"{manifest.name}: {len(jobs)} rows in {elapsed:.1f}s")
    for name in ("done", "skipped", "failed"):
        table.add_column(name, justify="right")
    table.add_row(*(str(counts[s]) for s in ("done", "skipped", "failed")))
    err.print(table)
    # Failed rows as plain lines: errors are long and must stay greppable in logs.
    for j in jobs:
        if j.status == "failed":
            err.print(f"failed: row {j.row} (line {j.line}) {j.image}: {j.error}", markup=False, highlight=False,
                      soft_wrap=True)


def run_manifest(manifest: Path, out_dir: Path, *, pipeline, opts: RunOptions, defaults: dict[str, Any], fmt: str,
                 json_out: bool, load_s: float) -> int:
    """Run a manifest; returns the exit code (0: nothing failed; 2: only bad rows; 1: otherwise)."""
    start = time.perf_counter()
    rows = read_manifest(manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs: list[Job] = []
    taken: dict[Path, int] = {}
    common = opts.common_key(pipeline)

    def finish(job: Job) -> None:
        if json_out:
            print_json_line(job.report())

    for row in rows:
        placeholder = Job(image=Path(str(row.values.get("image", ""))), condition=str(row.values.get("condition", "")),
                          seed=row.values.get("seed"), frames=0, settings=None, output=None, kind="",
                          sidecar=None, flow_output=None, row=row.number, line=row.line)
        if row.error:
            _fail(placeholder, UserError(f"row {row.number} (line {row.line}) {row.error}."))
            jobs.append(placeholder)
            finish(placeholder)
            continue
        try:
            job = job_from_row(row, pipeline=pipeline, base_dir=manifest.parent, out_dir=out_dir,
                               defaults=defaults, fmt=fmt, save_flow=opts.save_flow)
        except UserError as exc:
            _fail(placeholder, exc)
            jobs.append(placeholder)
            finish(placeholder)
            continue
        jobs.append(job)
        if job.output in taken:
            _fail(job, UserError(f"writes the same output as row {taken[job.output]} ({job.output.name}); "
                                 f"give each row its own 'output' name."))
            finish(job)
            continue
        taken[job.output] = job.row
        if job.output.exists():
            recorded = read_sidecar(job.sidecar)
            if recorded is not None and recorded.get("job") == job.key(common) and \
                    (job.flow_output is None or job.flow_output.exists()):
                job.status = "skipped"
                finish(job)
                continue
            if recorded is not None and not opts.overwrite:
                _fail(job, UserError(f"{job.output} exists and was made with other settings (its sidecar "
                                     f"{job.sidecar.name} differs); pass --overwrite to replace it."))
                finish(job)
                continue
            # An output without its sidecar is an unfinished job of an interrupted run: redo it.
    pending = sum(1 for j in jobs if j.status == "pending")
    if not opts.quiet:
        err.print(f"{len(jobs)} rows: {pending} to generate, "
                  f"{sum(1 for j in jobs if j.status == 'skipped')} already done, "
                  f"{sum(1 for j in jobs if j.status == 'failed')} bad.", highlight=False)
    run_jobs(pipeline, jobs, opts, strict=False, load_s=load_s, on_finish=finish)
    if not opts.quiet or any(j.status == "failed" for j in jobs):
        _summary(jobs, manifest, time.perf_counter() - start)
    failed = [j for j in jobs if j.status == "failed"]
    if not failed:
        return 0
    return 1 if any(j.exit_code == 1 for j in failed) else 2


# ---------------------------------------------------------------------------------------------
# The command


def generate(
    image: Optional[Path] = typer.Argument(None, help="Input image (any format Pillow reads). Omit with --manifest."),
    condition: Optional[str] = typer.Option(None, "--condition", "-c",
                                            help="Condition (class) name; `lfdm info MODEL` lists them. With "
                                                 "--manifest: the default for rows without one."),
    model: Optional[Path] = ModelOption,
    frames: Optional[int] = FramesOption,
    sampler: Optional[str] = SamplerOption,
    steps: Optional[int] = StepsOption,
    eta: Optional[float] = EtaOption,
    guidance: Optional[float] = GuidanceOption,
    ddim_spacing: Optional[str] = SpacingOption,
    seed: int = typer.Option(0, "--seed", "-s", min=0,
                             help="Seed of the first video (the others get seed+1, ...). Same seed, settings and "
                                  "device give identical frames."),
    num: int = typer.Option(1, "--num", "-n", min=1, help="Videos of the image to sample, in one batch."),
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="out.mp4 (H.264), out.gif, or out_dir/ for PNG frames. Default: "
                                              "IMAGE-STEM_CONDITION_sSEED.mp4 here. With --num N: "
                                              "NAME-SEED.mp4 for each video."),
    fps: Optional[float] = FpsOption,
    fit: Optional[str] = FitOption,
    save_flow: bool = typer.Option(False, "--save-flow",
                                   help="Also write NAME_flow.mp4: [input | generated | warped input | flow "
                                        "(Middlebury colours) | occlusion (white = visible)]."),
    keep_input_frame: bool = typer.Option(False, "--keep-input-frame",
                                          help="Put the (fitted) input image before the K generated frames "
                                               "(K+1 frames in all)."),
    overwrite: bool = OverwriteOption,
    manifest: Optional[Path] = typer.Option(None, "--manifest",
                                            help="Batch jobs: a .csv (header line) or .jsonl file with columns "
                                                 "image, condition and optional seed, frames, steps, guidance, "
                                                 "sampler, eta, output. Image paths are relative to the manifest."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Output folder for --manifest jobs."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1,
                                   help="Videos per device batch (jobs with the same settings share batches)."),
    fmt: str = typer.Option("mp4", "--format", help="Output format of manifest rows without a suffix in 'output': "
                                                    "mp4, gif or png (a folder of frames)."),
    decode_chunk: Optional[int] = DecodeChunkOption,
    ema: bool = EmaOption,
    device: str = DeviceOption,
    precision: str = GenPrecisionOption,
    compile_unet: bool = typer.Option(False, "--compile",
                                      help="torch.compile the U-Net: the first batch of each shape pays a "
                                           "one-off compile (over a minute on a CPU, where later calls measured "
                                           "0-14% faster); meant for long jobs and GPUs."),
    quiet: bool = QuietOption,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON line per video (per row with --manifest)."),
) -> None:
    """Animate a still image with a condition (a class of motion, e.g. a facial expression).

    The encoder computes the image's latent once; the diffusion model samples K latent flows and
    occlusion maps; the decoder warps the image by every flow, all frames in one batched pass.
    Frame 0 is the model's own first frame (the authors' models generate frame 0 too): close to,
    but not exactly, the input image; --keep-input-frame puts the input image in front. Every
    output gets a JSON sidecar (NAME.json) recording model, condition, seed, sampler, timings.

    Examples:

      lfdm generate face.png -c happiness -o happy.mp4

      lfdm generate face.png -c surprise --num 4 --seed 7 --save-flow -o out/surprise.gif

      lfdm generate --manifest jobs.csv --out-dir videos/ --batch-size 8
    """
    start = time.perf_counter()
    check_fit(fit)
    check_fps(fps)
    if fmt not in FORMATS:
        raise unknown_name_error("--format", fmt, FORMATS)
    overrides = sampling_overrides(sampler, steps, eta, guidance, ddim_spacing)
    if manifest is not None:
        if image is not None or output is not None:
            raise UserError("Give either IMAGE (with -o) or --manifest (with --out-dir), not both.")
        if out_dir is None:
            raise UserError("--manifest needs --out-dir (the folder the videos go to).")
        if num != 1:
            raise UserError("--num applies to single runs; give manifest rows their own seeds instead.")
    else:
        if image is None:
            raise UserError("Give an input IMAGE, or --manifest jobs.csv --out-dir DIR for batch jobs.",
                            hint="Example: lfdm generate face.png --condition happiness -o happy.mp4")
        if out_dir is not None:
            raise UserError("--out-dir is for --manifest runs; use -o for a single image.")
        if not image.exists():
            raise UserError(f"Image not found: {image}", hint="Check the path and try again.")
        if output is not None:
            output_kind(output)  # fail on a bad suffix before loading anything

    pipeline = load_pipeline(model, device, ema, precision, compile_unet)
    load_s = time.perf_counter() - start
    opts = RunOptions(fit=fit or pipeline.fit, fps=float(fps or pipeline.fps), keep_input_frame=keep_input_frame,
                      save_flow=save_flow, overwrite=overwrite, chunk_size=decode_chunk, batch_size=batch_size,
                      progress=not quiet and not json_out, quiet=quiet)
    if manifest is not None:
        defaults = {"condition": condition, "seed": seed, "frames": frames, "sampling": overrides}
        code = run_manifest(manifest, out_dir, pipeline=pipeline, opts=opts, defaults=defaults, fmt=fmt,
                            json_out=json_out, load_s=load_s)
        raise typer.Exit(code)

    if condition is None:
        raise UserError("--condition is required.",
                        hint=f"This model's conditions: {', '.join(pipeline.conditions)}.")
    pipeline.check_conditions([condition])
    settings = resolve_settings(pipeline, overrides)
    frames = frames or pipeline.default_frames
    seeds = [seed + i for i in range(num)]
    base = output if output is not None else f"{slug(image.stem)}_{slug(condition)}_s{seed}.mp4"
    kind = output_kind(base)
    base_path = Path(base.rstrip("/" + os.sep)) if kind == "frames" else Path(base)
    jobs = []
    for s in seeds:
        if num == 1:
            target = base_path
        elif kind == "frames":
            target = base_path.with_name(f"{base_path.name}-{s}")
        else:
            target = base_path.with_name(f"{base_path.stem}-{s}{base_path.suffix}")
        jobs.append(Job(image=image, condition=condition, seed=s, frames=frames, settings=settings, output=target,
                        kind=kind, sidecar=sidecar_path(target, kind),
                        flow_output=flow_path(target, kind) if save_flow else None))
    if not overwrite:
        existing = [p for j in jobs for p in (j.output, j.flow_output) if p is not None and p.exists()]
        if existing:
            raise UserError(f"{existing[0]} already exists" + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
                            + ".", hint="Pass --overwrite to replace it, or choose another -o.")
    digest = file_sha256(image)
    for job in jobs:
        job.image_sha256 = digest
    run_jobs(pipeline, jobs, opts, strict=True, load_s=load_s)
    for job in jobs:
        sidecar = read_sidecar(job.sidecar) or {}
        if json_out:
            print_json_line({"status": job.status, "output": str(job.output), "sidecar": str(job.sidecar),
                             "flow_output": str(job.flow_output) if job.flow_output else None,
                             "condition": job.condition, "seed": job.seed, "timings": sidecar.get("timings")})
        else:
            out.print(str(job.output), markup=False, highlight=False)
    if not quiet and not json_out:
        t = jobs[0].settings
        err.print(f"{len(jobs)} video(s) of {frames} frames at {pipeline.resolution}x{pipeline.resolution}, "
                  f"{t.sampler} {t.steps} steps, in {time.perf_counter() - start:.1f}s.", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
