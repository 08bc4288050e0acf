"""Sets of videos to score: an lfdm dataset folder, or a folder of videos with JSON sidecars.

A dataset folder (meta.json + manifest.jsonl + videos/*.npy, see `lfdm_cli.data.dataset`) gives
each video its class and subject from the manifest. A folder of videos (.mp4 and the other
container formats `lfdm_cli.io.video` reads, .gif, .npy arrays, or sub-folders of frames; what
`lfdm generate` writes) takes them from an optional sidecar `<name>.json` beside each video:
"class" (or "condition") and "subject" (or "source_image").

Clips are the first `frames` frames taken every `stride` frames; videos too short for that are
found before any network runs (from the manifest, or by probing files without decoding).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lfdm_cli.errors import UserError

SIDECAR_CLASS_KEYS = ("class", "condition")
SIDECAR_SUBJECT_KEYS = ("subject", "source_image")
GROUP_KEYS = ("class", "subject")


@dataclass
class VideoEntry:
    """One video of a set; `read(max_frames)` returns uint8 (T, H, W, 3)."""

    id: str
    source: str
    read: Callable[[int | None], np.ndarray] = field(repr=False)
    class_name: str | None = None
    subject: str | None = None
    frames: int | None = None  # known length, None until read (probing failed or not possible)

    def group(self, by: str) -> str | None:
        return self.class_name if by == "class" else self.subject


@dataclass
class VideoSet:
    path: Path
    kind: str  # "dataset" or "videos"
    entries: list[VideoEntry]
    split: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "split": self.split, "videos": len(self.entries)}


def clip_length_needed(frames: int, stride: int) -> int:
    """Frames a video must have for a clip of `frames` frames taken every `stride` frames."""
    return (frames - 1) * stride + 1


def take_clip(video: np.ndarray, frames: int, stride: int = 1) -> np.ndarray:
    """The first `frames` frames of `video` (T, H, W, C), every `stride`-th, as a contiguous
    uint8 (frames, H, W, 3) array; grey (T, H, W) or (T, H, W, 1) videos are repeated to RGB."""
    video = np.asarray(video)
    if video.ndim == 3:
        video = video[..., None]
    if video.ndim != 4 or video.shape[-1] not in (1, 3):
        raise UserError(f"expected a video array (T, H, W, 3), got shape {video.shape}.")
    if video.dtype != np.uint8:
        raise UserError(f"expected uint8 video frames, got {video.dtype}.",
                        hint="Convert the frames to 0..255 uint8 first.")
    needed = clip_length_needed(frames, stride)
    if video.shape[0] < needed:
        raise ValueError(f"video has {video.shape[0]} frames, the clip needs {needed}")
    clip = np.array(video[0:needed:stride], copy=True)  # also reads a memory-mapped slice into RAM
    if clip.shape[-1] == 1:
        clip = np.repeat(clip, 3, axis=-1)
    return clip


# --------------------------------------------------------------------------------------------
# Opening sets

def _open_dataset(path: Path, split: str | None) -> VideoSet:
    from lfdm_cli.data.dataset import Dataset

    ds = Dataset.open(path)
    if split is not None:
        ds = ds.split(split)
        if len(ds) == 0:
            raise UserError(f"{path}: the '{split}' split holds no videos.")

    def reader(record) -> Callable[[int | None], np.ndarray]:
        return lambda max_frames: ds.load(record)[:max_frames]

    entries = [VideoEntry(id=r.id, source=str(path / r.file), read=reader(r), class_name=r.class_name,
                          subject=r.subject, frames=r.frames) for r in ds.videos]
    return VideoSet(path=path, kind="dataset", entries=entries, split=split)


def _read_sidecar(video_path: Path) -> dict[str, Any]:
    sidecar = video_path.with_name(video_path.name + ".json") if video_path.is_dir() \
        else video_path.with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{sidecar}: not a readable JSON sidecar ({exc}).") from None
    if not isinstance(data, dict):
        raise UserError(f"{sidecar}: expected a JSON object.")
    return data


def _first_key(data: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if data.get(key) is not None:
            return str(data[key])
    return None


def _npy_reader(path: Path) -> Callable[[int | None], np.ndarray]:
    def read(max_frames: int | None) -> np.ndarray:
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable .npy video array ({exc}).") from None
        return array[:max_frames]
    return read


def _file_reader(path: Path) -> Callable[[int | None], np.ndarray]:
    def read(max_frames: int | None) -> np.ndarray:
        from lfdm_cli.io import read_video

        return read_video(path, max_frames=max_frames)
    return read


def _video_candidates(folder: Path) -> list[Path]:
    from lfdm_cli.io import FRAME_SUFFIXES, READ_SUFFIXES, natural_key

    found = []
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue  # hidden files and unfinished atomic writes
        if p.is_file() and p.suffix.lower() in READ_SUFFIXES + (".npy",):
            found.append(p)
        elif p.is_dir() and any(f.suffix.lower() in FRAME_SUFFIXES for f in p.iterdir()):
            found.append(p)
    return sorted(found, key=lambda p: natural_key(p.name))


def _open_video_folder(path: Path) -> VideoSet:
    entries = []
    for p in _video_candidates(path):
        meta = _read_sidecar(p)
        is_npy = p.suffix.lower() == ".npy"
        entries.append(VideoEntry(
            id=p.stem if p.is_file() else p.name, source=str(p),
            read=_npy_reader(p) if is_npy else _file_reader(p),
            class_name=_first_key(meta, SIDECAR_CLASS_KEYS),
            subject=_first_key(meta, SIDECAR_SUBJECT_KEYS)))
    if not entries:
        raise UserError(f"{path} holds no videos.",
                        hint="Give an lfdm dataset folder or a folder of .mp4/.gif/.npy videos or "
                             "frame folders (what `lfdm generate` writes).")
    return VideoSet(path=path, kind="videos", entries=entries)


def open_video_set(path: str | Path, split: str | None = None) -> VideoSet:
    """A dataset folder (only `split` of it, if given) or a folder of videos with sidecars."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such folder.")
    if not path.is_dir():
        raise UserError(f"{path} is a file; give a folder of videos or an lfdm dataset folder.")
    if (path / "meta.json").is_file() or (path / "manifest.jsonl").is_file():
        return _open_dataset(path, split)
    return _open_video_folder(path)  # splits only exist in datasets


# --------------------------------------------------------------------------------------------
# Lengths and clips

def _known_length(entry: VideoEntry) -> int | None:
    if entry.frames is not None:
        return entry.frames
    path = Path(entry.source)
    if path.suffix.lower() == ".npy":
        return int(entry.read(None).shape[0])  # memory-mapped: reads the header only
    from lfdm_cli.io import probe_video

    frames = probe_video(path).get("frames")
    return int(frames) if frames is not None else None


def find_short_videos(vset: VideoSet, frames: int, stride: int) -> list[tuple[VideoEntry, int]]:
    """Entries known to be shorter than the clip needs, with their length (probes files once)."""
    needed = clip_length_needed(frames, stride)
    short = []
    for entry in vset.entries:
        length = _known_length(entry)
        entry.frames = length
        if length is not None and length < needed:
            short.append((entry, length))
    return short


def short_videos_error(name: str, short: list[tuple[VideoEntry, int]], needed: int,
                       frames: int, stride: int) -> UserError:
    listed = ", ".join(f"{e.source} ({n} frames)" for e, n in short[:5])
    more = f" and {len(short) - 5} more" if len(short) > 5 else ""
    return UserError(
        f"{len(short)} {name} video(s) are shorter than the {needed} frames a clip of {frames} "
        f"frames with stride {stride} needs: {listed}{more}.",
        hint="Use fewer --frames or a smaller --stride, or pass --skip-short to leave them out.")


def iter_clips(entries: list[VideoEntry], frames: int, stride: int, *, skip_short: bool = False,
               used: list[VideoEntry] | None = None,
               skipped: list[tuple[VideoEntry, int]] | None = None) -> Iterator[np.ndarray]:
    """uint8 clips of `entries`, read one at a time. Entries that gave a clip are appended to
    `used`; with `skip_short`, too-short videos go to `skipped` instead of raising."""
    needed = clip_length_needed(frames, stride)
    for entry in entries:
        video = entry.read(needed)
        if video.shape[0] < needed:
            if skip_short:
                if skipped is not None:
                    skipped.append((entry, int(video.shape[0])))
                continue
            raise UserError(f"{entry.source} has {video.shape[0]} frames; a clip of {frames} frames "
                            f"with stride {stride} needs {needed}.",
                            hint="Use fewer --frames or pass --skip-short.")
        try:
            clip = take_clip(video, frames, stride)
        except UserError as exc:
            raise UserError(f"{entry.source}: {exc.message}", hint=exc.hint) from None
        if used is not None:
            used.append(entry)
        yield clip
