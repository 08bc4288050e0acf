"""The conversion engine every importer shares: plan -> convert in worker processes -> manifest.

An importer only *plans*: it walks its source layout and returns an `ImportPlan` of `Job`s (one
source to decode, producing one or more dataset videos) plus what it skipped or excluded and why.
`run_import` does the rest the same way for every source:

- never writes into a non-empty OUT that is not an lfdm dataset, nor into one made with another
  frame size, fit or importer;
- resumes: a video whose manifest record has the same source and whose .npy is complete is not
  converted again (its split/class/subject are refreshed from the plan);
- converts the remaining jobs in worker processes ('spawn'-safe: workers receive picklable jobs
  and call top-level functions), each video written atomically and journalled into
  manifest.jsonl as soon as it is done, so an interrupted run loses at most the videos in flight;
- at the end rewrites the manifest sorted by id, removes files no record points to, and marks
  the dataset complete. A video that cannot be read or is too short is skipped and reported;
  with `strict` any skip fails the run (and the dataset stays marked incomplete).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lfdm_cli.data.dataset import (
    CLASSES_FILE,
    MANIFEST_FILE,
    VIDEOS_DIR,
    VideoRecord,
    is_dataset_dir,
    new_meta,
    npy_shape,
    read_manifest_lines,
    read_meta,
    save_video_array,
    write_classes,
    write_manifest,
    write_meta,
)
from lfdm_cli.errors import RunFailure, UserError
from lfdm_cli.progress import Progress

DEFAULT_MIN_FRAMES = 2
FIT_CHOICES = ("pad", "crop", "stretch")


@dataclass(frozen=True)
class PlannedVideo:
    """One video the dataset will hold. `frame_range` (0-based, end exclusive) cuts a segment
    out of the decoded source; None takes all of it."""

    id: str
    split: str
    class_name: str
    subject: str | None
    source: str
    frame_range: tuple[int, int] | None = None


def read_source(job: "Job") -> np.ndarray:
    """Decode a job's source file or frame folder (the default `Job.load`)."""
    from lfdm_cli.io import read_video

    return read_video(job.path)


@dataclass
class Job:
    """One source to decode and the dataset videos it produces.

    `load(job)` returns the frames (T, H, W, 3) uint8; it must be a top-level function so the job
    can be sent to a spawned worker. `crop` is (top, bottom, left, right) in pixels of a frame of
    size `crop_ref` (H, W); other frame sizes get the same crop scaled, so a re-encoded or
    down-scaled copy of a dataset is cropped the same way.
    """

    path: str
    outputs: list[PlannedVideo]
    load: Callable[["Job"], np.ndarray] = read_source
    crop: tuple[int, int, int, int] | None = None
    crop_ref: tuple[int, int] | None = None
    args: tuple = ()


@dataclass(frozen=True)
class Skip:
    source: str
    reason: str
    id: str | None = None

    def to_json(self) -> dict:
        return {"source": self.source, "id": self.id, "reason": self.reason}


@dataclass
class ImportPlan:
    importer: str
    source: str
    classes: list[str]
    jobs: list[Job]
    skipped: list[Skip] = field(default_factory=list)    # problems: count against --strict
    excluded: list[Skip] = field(default_factory=list)   # left out on purpose (the split protocol)
    fps: float | None = None
    options: dict = field(default_factory=dict)

    @property
    def n_videos(self) -> int:
        return sum(len(j.outputs) for j in self.jobs)


@dataclass
class ImportSummary:
    out: Path
    importer: str
    planned: int = 0
    converted: int = 0
    reused: int = 0
    frames_converted: int = 0
    seconds: float = 0.0
    skipped: list[Skip] = field(default_factory=list)
    excluded: list[Skip] = field(default_factory=list)
    removed: int = 0
    videos: int = 0
    splits: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "out": str(self.out), "importer": self.importer, "videos": self.videos,
            "splits": self.splits, "converted": self.converted, "reused": self.reused,
            "removed": self.removed, "frames_converted": self.frames_converted,
            "seconds": round(self.seconds, 3),
            "frames_per_second": round(self.frames_converted / self.seconds, 1) if self.seconds > 0 else None,
            "skipped": [s.to_json() for s in self.skipped],
            "excluded": len(self.excluded),
            "excluded_reasons": dict(Counter(s.reason for s in self.excluded)),
        }


# ------------------------------------------------------------------------------ worker side


def scaled_crop(shape_hw: tuple[int, int], crop: tuple[int, int, int, int],
                ref_hw: tuple[int, int] | None) -> tuple[int, int, int, int]:
    h, w = shape_hw
    top, bottom, left, right = crop
    if ref_hw is not None and (h, w) != tuple(ref_hw):
        rh, rw = ref_hw
        top, bottom = round(top * h / rh), round(bottom * h / rh)
        left, right = round(left * w / rw), round(right * w / rw)
    top, left = max(0, top), max(0, left)
    bottom, right = min(h, bottom), min(w, right)
    if bottom - top < 1 or right - left < 1:
        raise UserError(f"the crop {crop} leaves nothing of a {w}x{h} frame")
    return top, bottom, left, right


def _init_worker() -> None:
    # Workers resize with torch, imported lazily after this runs: one intra-op thread per process
    # avoids oversubscribing the cores (torch reads OMP_NUM_THREADS when it is imported).
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def process_job(job: Job, out_dir: str, size: int, fit: str, min_frames: int) -> list[tuple]:
    """Decode one job and write its videos. Returns, per output, ("ok", record) or ("skip", Skip).

    Top-level so that spawned worker processes can run it. Unreadable sources and too-short
    videos are skips; failing to *write* is a RunFailure (the disk, not the data, is at fault).
    """
    from lfdm_cli.io import fit_frames

    try:
        frames = job.load(job)
        if job.crop is not None:
            t, b, l, r = scaled_crop(frames.shape[1:3], job.crop, job.crop_ref)
            frames = frames[:, t:b, l:r]
    except UserError as exc:
        return [("skip", Skip(o.source, exc.message, o.id)) for o in job.outputs]
    except (OSError, ValueError) as exc:
        return [("skip", Skip(o.source, f"could not read it ({exc})", o.id)) for o in job.outputs]
    results: list[tuple] = []
    for out in job.outputs:
        clip = frames
        if out.frame_range is not None:
            start, end = out.frame_range
            if start < 0 or end > len(frames) or end <= start:
                results.append(("skip", Skip(out.source, f"frames {start + 1}-{end} lie outside the "
                                                         f"video's {len(frames)} frames", out.id)))
                continue
            clip = frames[start:end]
        if len(clip) < min_frames:
            results.append(("skip", Skip(out.source, f"too short: {len(clip)} frame(s), fewer than "
                                                     f"--min-frames {min_frames}", out.id)))
            continue
        if clip.shape[1:3] != (size, size):
            clip = fit_frames(clip, size, fit)
        rel = f"{VIDEOS_DIR}/{out.id}.npy"
        try:
            save_video_array(Path(out_dir) / rel, np.ascontiguousarray(clip))
        except OSError as exc:
            raise RunFailure(f"Could not write {Path(out_dir) / rel}: {exc.strerror or exc}.") from None
        results.append(("ok", VideoRecord(id=out.id, split=out.split, class_name=out.class_name,
                                          subject=out.subject, frames=int(clip.shape[0]),
                                          height=size, width=size, source=out.source, file=rel)))
    return results


# ------------------------------------------------------------------------------ parent side


def _check_plan(plan: ImportPlan) -> None:
    ids = Counter(o.id for j in plan.jobs for o in j.outputs)
    dupes = [i for i, n in ids.items() if n > 1]
    if dupes:  # importers make ids unique; this guards the manifest against a planning bug
        raise RunFailure(f"Internal error: the {plan.importer} importer planned duplicate ids: {dupes[:5]}")
    known = set(plan.classes)
    for j in plan.jobs:
        for o in j.outputs:
            if o.class_name not in known:
                raise RunFailure(f"Internal error: class '{o.class_name}' is not among the planned classes.")


def prepare_out(out: Path, importer: str, size: int, fit: str) -> dict | None:
    """Check OUT may be written; returns the existing dataset's meta when resuming."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; the output must be a folder.")
    if not out.exists() or not any(out.iterdir()):
        return None
    if not is_dataset_dir(out):
        raise UserError(f"{out} is not empty and is not an lfdm dataset; refusing to write into it.",
                        hint="Choose a new or empty folder for OUT.")
    meta = read_meta(out)
    theirs = (meta.get("importer"), meta.get("size"), meta.get("fit"))
    if theirs != (importer, size, fit):
        raise UserError(
            f"{out} already holds a dataset made by '{theirs[0]}' at size {theirs[1]} with fit "
            f"'{theirs[2]}'; this run asks for '{importer}' at size {size} with fit '{fit}'.",
            hint="Use another OUT folder, or delete this one to convert again from scratch.")
    return meta


def _resumable(record: VideoRecord, planned: PlannedVideo, out: Path, size: int) -> bool:
    if record.source != planned.source or (record.height, record.width) != (size, size):
        return False
    shape = npy_shape(out / record.file)
    return shape == (record.frames, size, size, 3)


def _sweep_files(out: Path, keep: set[str]) -> int:
    """Delete .npy files (and temp files of interrupted writes) no record refers to."""
    removed = 0
    folder = out / VIDEOS_DIR
    if not folder.is_dir():
        return 0
    for f in folder.iterdir():
        rel = f"{VIDEOS_DIR}/{f.name}"
        if f.is_file() and rel not in keep and (f.suffix == ".npy" or ".partial" in f.name):
            f.unlink()
            removed += 1
    return removed


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def run_import(plan: ImportPlan, out: str | os.PathLike, *, size: int = 128, fit: str = "pad",
               workers: int = 0, strict: bool = False, min_frames: int = DEFAULT_MIN_FRAMES,
               progress: bool = True, log: Callable[[str], None] | None = None) -> ImportSummary:
    """Convert a plan into the dataset folder `out` (see the module docstring)."""
    if size < 8:
        raise UserError(f"--size must be at least 8, got {size}.")
    if fit not in FIT_CHOICES:
        from lfdm_cli.errors import unknown_name_error

        raise unknown_name_error("fit mode", fit, FIT_CHOICES)
    if min_frames < 1:
        raise UserError(f"--min-frames must be at least 1, got {min_frames}.")
    _check_plan(plan)
    if plan.n_videos == 0:
        detail = ""
        if plan.skipped or plan.excluded:
            detail = f" ({len(plan.skipped)} skipped, {len(plan.excluded)} excluded by the split protocol)"
        raise UserError(f"Found no videos to convert in {plan.source}{detail}.",
                        hint="Check that SRC has the layout this importer expects (see `--help`).")
    out = Path(out)
    old_meta = prepare_out(out, plan.importer, size, fit)
    (out / VIDEOS_DIR).mkdir(parents=True, exist_ok=True)

    meta = new_meta(size=size, fit=fit, importer=plan.importer, source=plan.source, fps=plan.fps,
                    extra={"options": plan.options})
    if old_meta is not None:
        meta["created"] = old_meta.get("created", meta["created"])
    write_meta(out, meta)
    write_classes(out / CLASSES_FILE, plan.classes)

    summary = ImportSummary(out=out, importer=plan.importer, planned=plan.n_videos,
                            skipped=list(plan.skipped), excluded=list(plan.excluded))
    existing = {r.id: r for r in read_manifest_lines(out / MANIFEST_FILE, tolerate_torn_tail=True)}
    done: dict[str, VideoRecord] = {}
    todo: list[Job] = []
    for job in plan.jobs:
        remaining = []
        for o in job.outputs:
            rec = existing.get(o.id)
            if rec is not None and _resumable(rec, o, out, size):
                done[o.id] = VideoRecord(id=o.id, split=o.split, class_name=o.class_name,
                                         subject=o.subject, frames=rec.frames, height=size,
                                         width=size, source=o.source, file=rec.file)
            else:
                remaining.append(o)
        if remaining:
            todo.append(Job(path=job.path, outputs=remaining, load=job.load, crop=job.crop,
                            crop_ref=job.crop_ref, args=job.args))
    summary.reused = len(done)
    # The journal starts as the reusable records; new ones are appended as they finish.
    write_manifest(out / MANIFEST_FILE, sorted(done.values(), key=lambda r: r.id))

    n_todo = sum(len(j.outputs) for j in todo)
    if log and summary.reused:
        log(f"Resuming: {summary.reused} video(s) already converted, {n_todo} to go.")
    if workers <= 0:
        workers = default_workers()
    workers = max(1, min(workers, len(todo)))

    start = time.perf_counter()
    bar = Progress(n_todo, f"{plan.importer}", unit="video", enabled=progress and n_todo > 0)
    try:
        with open(out / MANIFEST_FILE, "a", encoding="utf-8") as journal:
            def collect(results: list[tuple]) -> None:
                for status, item in results:
                    if status == "ok":
                        done[item.id] = item
                        summary.converted += 1
                        summary.frames_converted += item.frames
                        journal.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
                    else:
                        summary.skipped.append(item)
                journal.flush()
                bar.update(len(results))
                if summary.skipped:
                    bar.set_postfix({"skipped": len(summary.skipped)})

            args = (str(out), size, fit, min_frames)
            if workers == 1:
                for job in todo:
                    collect(process_job(job, *args))
            else:
                ctx = multiprocessing.get_context("spawn")
                with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                            initializer=_init_worker) as pool:
                    futures = [pool.submit(process_job, job, *args) for job in todo]
                    try:
                        for fut in cf.as_completed(futures):
                            collect(fut.result())
                    except BaseException:
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start

    records = sorted(done.values(), key=lambda r: r.id)
    write_manifest(out / MANIFEST_FILE, records)
    summary.removed = _sweep_files(out, {r.file for r in records})
    summary.videos = len(records)
    summary.splits = dict(sorted(Counter(r.split for r in records).items()))
    meta["complete"] = not (strict and summary.skipped) and bool(records)
    meta["counts"] = {"videos": len(records), **summary.splits,
                      "frames": int(sum(r.frames for r in records))}
    meta["skipped"] = [s.to_json() for s in summary.skipped]
    meta["excluded"] = len(summary.excluded)
    write_meta(out, meta)
    if strict and summary.skipped:
        lines = "\n".join(f"  {s.source}: {s.reason}" for s in summary.skipped[:20])
        more = f"\n  ... and {len(summary.skipped) - 20} more" if len(summary.skipped) > 20 else ""
        raise UserError(f"--strict: {len(summary.skipped)} video(s) were skipped:\n{lines}{more}",
                        hint=f"Fix or remove them and run again (converted videos in {out} are kept), "
                             "or run without --strict to accept the skips.")
    if not records:
        raise UserError(f"No video of {plan.source} could be converted; see the skipped list above.")
    return summary


def split_by_subject(subjects: list[str], test_fraction: float, seed: int) -> set[str]:
    """The test subjects: a seeded shuffle of the sorted subjects, the first round(f * n) of them
    (at least one when f > 0 and there are two or more, never all of them)."""
    subjects = sorted(set(subjects))
    n_test = _n_test(len(subjects), test_fraction)
    order = np.random.default_rng(seed).permutation(len(subjects))
    return {subjects[i] for i in order[:n_test]}


def _n_test(n: int, fraction: float) -> int:
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"--test-fraction must be in [0, 1), got {fraction}.")
    if fraction == 0 or n < 2:
        return 0
    return int(min(max(round(fraction * n), 1), n - 1))


def unique_ids(names: list[str]) -> list[str]:
    """Make ids unique deterministically by suffixing repeats with -2, -3, ..."""
    seen: Counter = Counter()
    out = []
    taken = set(names)
    for name in names:
        seen[name] += 1
        if seen[name] == 1:
            out.append(name)
            continue
        k = seen[name]
        while f"{name}-{k}" in taken:
            k += 1
        taken.add(f"{name}-{k}")
        out.append(f"{name}-{k}")
    return out
