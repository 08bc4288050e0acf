"""Dataset commands: `lfdm preprocess mug|mhad|natops|folder`, `lfdm data info|preview`,
`lfdm synth faces`."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from lfdm_cli.cli.common import JsonOption, err, out, print_json
from lfdm_cli.errors import UserError

preprocess_app = typer.Typer(help="Convert a video dataset into lfdm's dataset format (done once, before training).",
                             no_args_is_help=True)
data_app = typer.Typer(help="Inspect converted datasets.", no_args_is_help=True)
synth_app = typer.Typer(help="Render synthetic datasets (no download needed).", no_args_is_help=True)

SizeOption = typer.Option(128, "--size", min=8, help="Frame size in pixels (square).")
FitOption = typer.Option("pad", "--fit", help="How frames become square: pad (keep aspect, black bars; "
                                              "the reference's way), crop (centre crop) or stretch.")
WorkersOption = typer.Option(0, "--workers", min=0, help="Worker processes (0: one per CPU core, at most 8).")
StrictOption = typer.Option(False, "--strict", help="Fail (exit 2) if any video is skipped; the dataset "
                                                     "is then left marked incomplete.")
MinFramesOption = typer.Option(2, "--min-frames", min=1, help="Skip videos with fewer frames than this.")
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress output.")


def _report(summary, json_out: bool) -> None:
    if json_out:
        print_json(summary.to_json())
        return
    rate = f" ({summary.frames_converted / summary.seconds:.0f} frames/s)" if summary.seconds > 0 and summary.converted else ""
    err.print(f"Converted {summary.converted} video(s), {summary.frames_converted} frames, in "
              f"{summary.seconds:.1f} s{rate}; {summary.reused} already done.", highlight=False)
    if summary.removed:
        err.print(f"Removed {summary.removed} file(s) of videos no longer in the source.", highlight=False)
    if summary.excluded:
        reasons = Counter(s.reason for s in summary.excluded)
        for reason, n in reasons.items():
            err.print(f"Left out {n} video(s): {reason}.", highlight=False)
    if summary.skipped:
        err.print(f"Skipped {len(summary.skipped)} video(s):", style="yellow", highlight=False)
        for s in summary.skipped[:30]:
            err.print(f"  {s.source}: {s.reason}", markup=False, highlight=False)
        if len(summary.skipped) > 30:
            err.print(f"  ... and {len(summary.skipped) - 30} more (listed in meta.json)", highlight=False)
    splits = ", ".join(f"{k} {v}" for k, v in summary.splits.items())
    out.print(f"{summary.out}: {summary.videos} videos ({splits})", highlight=False)


def _run(plan, dest: Path, size: int, fit: str, workers: int, strict: bool, min_frames: int,
         quiet: bool, json_out: bool) -> None:
    from lfdm_cli.data.importers.common import run_import

    summary = run_import(plan, dest, size=size, fit=fit, workers=workers, strict=strict,
                         min_frames=min_frames, progress=not quiet,
                         log=None if quiet else lambda m: err.print(m, highlight=False))
    _report(summary, json_out)


@preprocess_app.command("mug")
def preprocess_mug(
    src: Path = typer.Argument(..., metavar="SRC", help="MUG folder holding the subject folders 001, 002, ..."),
    dest: Path = typer.Argument(..., metavar="OUT", help="Output dataset folder (new, empty, or one to resume)."),
    size: int = SizeOption, fit: str = FitOption, workers: int = WorkersOption, strict: bool = StrictOption,
    min_frames: int = MinFramesOption, quiet: bool = QuietOption, json_out: bool = JsonOption,
) -> None:
    """MUG facial expressions: SRC/<subject>/[session0|session1/]<expression>/<take>/<frames>.

    Uses the authors' split (26 training / 26 test subjects); subjects outside it are left out.
    Re-running resumes: converted videos are kept.

    Example: lfdm preprocess mug ~/data/MUG data/mug128
    """
    from lfdm_cli.data.importers import mug

    _run(mug.plan(src), dest, size, fit, workers, strict, min_frames, quiet, json_out)


@preprocess_app.command("mhad")
def preprocess_mhad(
    src: Path = typer.Argument(..., metavar="SRC", help="Folder holding a{a}_s{s}_t{t}_color.avi (searched recursively)."),
    dest: Path = typer.Argument(..., metavar="OUT", help="Output dataset folder (new, empty, or one to resume)."),
    size: int = SizeOption, fit: str = FitOption, workers: int = WorkersOption, strict: bool = StrictOption,
    min_frames: int = MinFramesOption, quiet: bool = QuietOption, json_out: bool = JsonOption,
) -> None:
    """UTD-MHAD RGB videos, cropped like the authors (rows 0:480, cols 156:492), 27 action classes.

    Subjects 1, 2, 3, 5 train; 4, 6, 7, 8 test.

    Example: lfdm preprocess mhad ~/data/UTD-MHAD/RGB data/mhad128
    """
    from lfdm_cli.data.importers import mhad

    _run(mhad.plan(src), dest, size, fit, workers, strict, min_frames, quiet, json_out)


@preprocess_app.command("natops")
def preprocess_natops(
    src: Path = typer.Argument(..., metavar="SRC", help="NATOPS folder with gesture01/ ... gesture24/ and segmentation.txt."),
    dest: Path = typer.Argument(..., metavar="OUT", help="Output dataset folder (new, empty, or one to resume)."),
    size: int = SizeOption, fit: str = FitOption, workers: int = WorkersOption, strict: bool = StrictOption,
    min_frames: int = MinFramesOption, quiet: bool = QuietOption, json_out: bool = JsonOption,
) -> None:
    """NATOPS gestures: each gXXsYY.avi cut into its repetitions with segmentation.txt, cropped
    like the authors (rows 10:239, cols 30:290), 24 gesture classes, the authors' subject split.

    Example: lfdm preprocess natops ~/data/NATOPS/data data/natops128
    """
    from lfdm_cli.data.importers import natops

    _run(natops.plan(src), dest, size, fit, workers, strict, min_frames, quiet, json_out)


@preprocess_app.command("folder")
def preprocess_folder(
    src: Path = typer.Argument(..., metavar="SRC", help="SRC/<class>/<video file or frame folder>, or a .csv/.jsonl "
                                         "listing with path, class and optional subject, split."),
    dest: Path = typer.Argument(..., metavar="OUT", help="Output dataset folder (new, empty, or one to resume)."),
    subject_pattern: str = typer.Option(None, "--subject-pattern", help="Regex searched in each video's "
                                        "path; its first group (or group 'subject') is the subject, so "
                                        "the split keeps each subject on one side."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", min=0.0, max=0.99,
                                        help="Fraction of subjects (or videos per class) held out for testing."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/test split."),
    size: int = SizeOption, fit: str = FitOption, workers: int = WorkersOption, strict: bool = StrictOption,
    min_frames: int = MinFramesOption, quiet: bool = QuietOption, json_out: bool = JsonOption,
) -> None:
    """Your own videos (mp4/avi/mov/webm/mkv/gif files or folders of frames), one folder per class.

    Example: lfdm preprocess folder ~/clips data/clips64 --size 64 --subject-pattern 'person(\\d+)'
    """
    from lfdm_cli.data.importers import folder

    plan = folder.plan(src, subject_pattern=subject_pattern, test_fraction=test_fraction, seed=seed)
    _run(plan, dest, size, fit, workers, strict, min_frames, quiet, json_out)


@synth_app.command("faces")
def synth_faces(
    dest: Path = typer.Argument(..., metavar="OUT", help="Output dataset folder (new, empty, or one to resume)."),
    subjects: int = typer.Option(24, "--subjects", min=1, help="Number of drawn identities."),
    takes: int = typer.Option(2, "--takes", min=1, help="Videos per subject and expression."),
    frames: int = typer.Option(32, "--frames", min=2, help="Frames per video."),
    size: int = typer.Option(64, "--size", min=16, help="Frame size in pixels (square)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    test_fraction: float = typer.Option(0.25, "--test-fraction", min=0.0, max=0.99,
                                        help="Fraction of subjects held out for testing (unseen identities)."),
    workers: int = WorkersOption, quiet: bool = QuietOption, json_out: bool = JsonOption,
) -> None:
    """SynthFaces: drawn faces performing MUG's seven expressions (a MUG-like dataset, no download).

    Example: lfdm synth faces data/synthfaces64 --subjects 24 --takes 2 --frames 32 --size 64
    """
    from lfdm_cli.data.synthfaces import plan_synthfaces

    plan = plan_synthfaces(subjects=subjects, takes=takes, frames=frames, size=size, seed=seed,
                           test_fraction=test_fraction)
    _run(plan, dest, size, "pad", workers, False, 1, quiet, json_out)


# ------------------------------------------------------------------------------ data info


def dataset_stats(ds) -> dict:
    frames = np.array([v.frames for v in ds.videos], dtype=np.int64)
    per_class: dict[str, dict[str, int]] = {c: {"train": 0, "test": 0} for c in ds.classes}
    per_subject: dict[str, dict] = {}
    splits: dict[str, dict] = {}
    for v in ds.videos:
        per_class[v.class_name][v.split] += 1
        key = v.subject if v.subject is not None else "(unknown)"
        entry = per_subject.setdefault(key, {"splits": set(), "videos": 0})
        entry["splits"].add(v.split)
        entry["videos"] += 1
        s = splits.setdefault(v.split, {"videos": 0, "frames": 0, "subjects": set()})
        s["videos"] += 1
        s["frames"] += v.frames
        if v.subject is not None:
            s["subjects"].add(v.subject)
    size_bytes = sum((ds.path / v.file).stat().st_size for v in ds.videos if (ds.path / v.file).exists())
    return {
        "path": str(ds.path),
        "importer": ds.meta.get("importer"),
        "complete": bool(ds.meta.get("complete")),
        "size": ds.meta.get("size"),
        "fit": ds.meta.get("fit"),
        "fps": ds.meta.get("fps"),
        "created": ds.meta.get("created"),
        "lfdm_version": ds.meta.get("lfdm_version"),
        "videos": len(ds.videos),
        "classes": per_class,
        "splits": {k: {"videos": v["videos"], "frames": v["frames"], "subjects": len(v["subjects"])}
                   for k, v in sorted(splits.items())},
        "subjects": {k: {"split": "/".join(sorted(v["splits"])), "videos": v["videos"]}
                     for k, v in sorted(per_subject.items())},
        "frames": {"total": int(frames.sum()), "min": int(frames.min()), "max": int(frames.max()),
                   "mean": round(float(frames.mean()), 2), "median": float(np.median(frames))}
        if len(frames) else {"total": 0},
        "bytes": size_bytes,
        "skipped": len(ds.meta.get("skipped", [])),
    }


@data_app.command("info")
def info_cmd(
    data: Path = typer.Argument(..., help="A dataset folder (from `lfdm preprocess` or `lfdm synth faces`)."),
    json_out: bool = JsonOption,
) -> None:
    """Counts per split, class and subject, and frame-count statistics.

    Example: lfdm data info data/synthfaces64
    """
    from lfdm_cli.data.dataset import Dataset

    ds = Dataset.open(data, allow_incomplete=True)
    st = dataset_stats(ds)
    if json_out:
        print_json(st)
        return
    status = "complete" if st["complete"] else "INCOMPLETE (re-run the command that made it)"
    out.print(f"{data}: {st['importer']} dataset, {st['videos']} videos, {len(ds.classes)} classes, "
              f"{len(ds.subjects())} subjects, {st['size']}x{st['size']} ({st['fit']}), "
              f"{st['bytes'] / 1e6:.1f} MB, {status}", highlight=False)
    t = Table("split", "videos", "subjects", "frames", title="splits")
    for name, s in st["splits"].items():
        t.add_row(name, str(s["videos"]), str(s["subjects"]), str(s["frames"]))
    out.print(t)
    t = Table("class", "train", "test", "total", title="classes")
    for name, c in st["classes"].items():
        t.add_row(name, str(c["train"]), str(c["test"]), str(c["train"] + c["test"]))
    out.print(t)
    t = Table("subject", "split", "videos", title="subjects")
    for name, s in st["subjects"].items():
        t.add_row(name, s["split"], str(s["videos"]))
    out.print(t)
    f = st["frames"]
    if st["videos"]:
        out.print(f"frames per video: min {f['min']}, median {f['median']:g}, mean {f['mean']:.1f}, "
                  f"max {f['max']}; total {f['total']}", highlight=False)
    if st["skipped"]:
        out.print(f"{st['skipped']} source video(s) were skipped when converting (listed in meta.json).",
                  highlight=False)


# ------------------------------------------------------------------------------ data preview


def pick_preview(ds, per_class: int) -> list:
    """Up to `per_class` videos of each class, from different subjects where possible, in subject
    order, so that with one column per class each row tends to show one subject."""
    by_class = defaultdict(list)
    for v in sorted(ds.videos, key=lambda v: (v.subject or "", v.id)):
        by_class[v.class_name].append(v)
    picks = {}
    for cls in ds.classes:
        chosen, subjects = [], set()
        for v in by_class[cls]:
            if len(chosen) < per_class and v.subject not in subjects:
                chosen.append(v)
                subjects.add(v.subject)
        for v in by_class[cls]:
            if len(chosen) < per_class and v not in chosen:
                chosen.append(v)
        picks[cls] = chosen
    return picks


@data_app.command("preview")
def preview_cmd(
    data: Path = typer.Argument(..., help="A dataset folder."),
    output: Path = typer.Option(..., "-o", "--output", help="grid.gif or grid.mp4 (animated) or grid.png "
                                                             "(a strip of frames per video)."),
    per_class: int = typer.Option(3, "--per-class", min=1, help="Videos shown per class."),
    split: str = typer.Option("all", "--split", help="all, train or test."),
    frames: int = typer.Option(32, "--frames", min=2, help="Frames taken from each video (evenly spaced)."),
    fps: float = typer.Option(8.0, "--fps", min=0.1, help="Frame rate of an animated preview."),
) -> None:
    """A grid of a few videos per class, each labelled with its class.

    Example: lfdm data preview data/synthfaces64 -o preview.gif --per-class 4
    """
    from lfdm_cli.data.dataset import Dataset
    from lfdm_cli.io import make_grid, save_image, write_video

    suffix = output.suffix.lower()
    if suffix not in (".gif", ".mp4", ".png", ".jpg", ".jpeg"):
        raise UserError(f"Cannot write a preview to {output}: use .gif, .mp4 or .png.")
    if split not in ("all", "train", "test"):
        raise UserError(f"--split must be all, train or test, got '{split}'.")
    ds = Dataset.open(data)
    if split != "all":
        ds = ds.split(split)
    if not ds.videos:
        raise UserError(f"{data} has no {split} videos to preview.")
    picks = pick_preview(ds, per_class)
    classes = [c for c in ds.classes if picks[c]]
    animated = suffix in (".gif", ".mp4")
    # Few classes, animated: one column per class, so that rows line up subjects. Otherwise one
    # row per class. Missing videos become blank tiles so rows and columns stay aligned.
    by_column = animated and len(classes) <= 8
    slots = ([(c, i) for i in range(per_class) for c in classes] if by_column
             else [(c, i) for c in classes for i in range(per_class)])
    ncols = len(classes) if by_column else per_class
    size = ds.size
    tiles, captions = [], []
    for cls, i in slots:
        if i >= len(picks[cls]):
            tiles.append(np.zeros((size, size if animated else 6 * size, 3), np.uint8))
            captions.append("")
            continue
        v = picks[cls][i]
        video = ds.load(v)
        if animated:
            idx = np.linspace(0, len(video) - 1, min(frames, len(video))).round().astype(int)
            tiles.append(np.asarray(video[idx]))
            captions.append(cls)
        else:
            idx = np.linspace(0, len(video) - 1, 6).round().astype(int)
            tiles.append(np.concatenate(list(np.asarray(video[idx])), axis=1))
            captions.append(f"{cls} | {v.subject or v.id}")
    grid = make_grid(tiles, captions, ncols=ncols)
    if animated:
        write_video(output, grid, fps=fps)
    else:
        save_image(output, grid[0])
    shown = sum(len(picks[c]) for c in classes)
    err.print(f"Wrote {output} ({shown} videos, {len(classes)} classes).", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(preprocess_app, name="preprocess")
    app.add_typer(data_app, name="data")
    app.add_typer(synth_app, name="synth")
