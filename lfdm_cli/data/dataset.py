"""The project's dataset format: every source (MUG, MHAD, NATOPS, a user's folder, SynthFaces) is
converted once into it, and training and evaluation read nothing else.

A dataset folder holds

- `meta.json`: the marker that makes a folder an lfdm dataset (`format`, `format_version`), the
  frame size and fit, the importer and its source, when and by which version it was made, and
  whether the conversion finished (`complete`);
- `classes.txt`: the class names, one a line; a class's label is its line number (0-based);
- `manifest.jsonl`: one JSON object a line per video:
  `{id, split, class, subject, frames, height, width, source, file}`, `file` relative to the folder;
- `videos/<id>.npy`: one uint8 array (T, H, W, 3) per video. `.npy` can be memory-mapped, so
  training reads two random frames of a long video without decoding or loading the rest.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lfdm_cli import __version__
from lfdm_cli.atomic import atomic_path, write_text_atomic
from lfdm_cli.errors import UserError

FORMAT_NAME = "lfdm-dataset"
FORMAT_VERSION = 1
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.jsonl"
CLASSES_FILE = "classes.txt"
VIDEOS_DIR = "videos"
SPLITS = ("train", "test")

_RECORD_KEYS = ("id", "split", "class", "subject", "frames", "height", "width", "source", "file")
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_id(text: str) -> str:
    """A video id usable as a file name on every platform: runs of other characters become '-'."""
    cleaned = _SAFE_ID.sub("-", text).strip("-.")
    return cleaned or "video"


@dataclass(frozen=True)
class VideoRecord:
    """One manifest line. `class_name` is the manifest's "class" (a Python keyword)."""

    id: str
    split: str
    class_name: str
    subject: str | None
    frames: int
    height: int
    width: int
    source: str
    file: str

    def to_json(self) -> dict:
        return {"id": self.id, "split": self.split, "class": self.class_name,
                "subject": self.subject, "frames": self.frames, "height": self.height,
                "width": self.width, "source": self.source, "file": self.file}

    @classmethod
    def from_json(cls, data: dict, where: str = "") -> "VideoRecord":
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(data).__name__}.")
        missing = [k for k in _RECORD_KEYS if k not in data]
        if missing:
            raise UserError(f"{where}: the record lacks {', '.join(missing)}.",
                            hint="Re-create the dataset with `lfdm preprocess` or `lfdm synth faces`.")
        try:
            record = cls(id=str(data["id"]), split=str(data["split"]), class_name=str(data["class"]),
                         subject=None if data["subject"] is None else str(data["subject"]),
                         frames=int(data["frames"]), height=int(data["height"]),
                         width=int(data["width"]), source=str(data["source"]), file=str(data["file"]))
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: bad value in the record ({exc}).") from None
        if record.split not in SPLITS:
            raise UserError(f"{where}: split '{record.split}' is not one of {', '.join(SPLITS)}.")
        return record


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def is_dataset_dir(path: str | os.PathLike) -> bool:
    """True when `path` holds a meta.json with the lfdm dataset marker (complete or not)."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME


def read_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    meta_path = path / META_FILE
    if not path.exists():
        raise UserError(f"Dataset folder not found: {path}")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a dataset folder.")
    if not meta_path.is_file():
        raise UserError(f"{path} is not an lfdm dataset (it has no {META_FILE}).",
                        hint="Convert videos into one with `lfdm preprocess mug|mhad|natops|folder SRC OUT` "
                             "or render one with `lfdm synth faces OUT`.")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise UserError(f"{meta_path} is not valid JSON ({exc}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise UserError(f"{path} is not an lfdm dataset ({meta_path} lacks the '{FORMAT_NAME}' marker).")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{path} uses dataset format version {version!r}; this lfdm ({__version__}) "
                        f"reads version {FORMAT_VERSION} or older.", hint="Upgrade lfdm.")
    return meta


def read_manifest_lines(path: Path, tolerate_torn_tail: bool = False) -> list[VideoRecord]:
    """Records of a manifest. An interrupted import can leave a half-written last line; the
    importer itself tolerates it (`tolerate_torn_tail`) because it rewrites the file at the end."""
    if not path.is_file():
        return []
    records = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            if tolerate_torn_tail and n == len(lines):
                break
            raise UserError(f"{path}, line {n}: not valid JSON.") from None
        records.append(VideoRecord.from_json(data, where=f"{path}, line {n}"))
    return records


def write_manifest(path: Path, records: Iterable[VideoRecord]) -> None:
    text = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
    write_text_atomic(path, text)


def write_classes(path: Path, classes: list[str]) -> None:
    for name in classes:
        if not name or "\n" in name or name != name.strip():
            raise UserError(f"Class name {name!r} cannot be stored: names must be non-empty, on one "
                            "line and without leading or trailing spaces.")
    write_text_atomic(path, "".join(c + "\n" for c in classes))


def new_meta(*, size: int, fit: str, importer: str, source: str, fps: float | None = None,
             extra: dict | None = None) -> dict:
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "size": int(size), "fit": fit,
            "importer": importer, "source": source, "fps": fps, "created": _now(),
            "lfdm_version": __version__, "complete": False}
    if extra:
        meta.update(extra)
    return meta


def write_meta(path: str | os.PathLike, meta: dict) -> None:
    write_text_atomic(Path(path) / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def save_video_array(path: Path, frames: np.ndarray) -> None:
    """Write one video's array atomically: a crash never leaves a truncated .npy under its name."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(frames), allow_pickle=False)


def npy_shape(path: Path) -> tuple | None:
    """Shape stored in an .npy header, reading the header only; None if the file is missing,
    not a uint8 .npy, or shorter than its header promises (a torn write)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
            data_start = fh.tell()
    except (OSError, ValueError):
        return None
    if dtype != np.uint8 or os.path.getsize(path) < data_start + int(np.prod(shape)):
        return None
    return tuple(shape)


@dataclass
class Dataset:
    """A converted dataset, opened with `Dataset.open(path)`.

    `videos` is the list of records (a subset after `split()`), `classes` the ordered class names.
    """

    path: Path
    meta: dict
    classes: list[str]
    videos: list[VideoRecord]
    _by_id: dict[str, VideoRecord] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {v.id: v for v in self.videos}
        self._class_index = {c: i for i, c in enumerate(self.classes)}

    @classmethod
    def open(cls, path: str | os.PathLike, allow_incomplete: bool = False) -> "Dataset":
        path = Path(path)
        meta = read_meta(path)
        if not meta.get("complete", False) and not allow_incomplete:
            raise UserError(
                f"The dataset in {path} is incomplete: its conversion was interrupted or failed.",
                hint=f"Run the same command again (importer '{meta.get('importer')}') to finish it; "
                     "converted videos are kept.")
        classes_path = path / CLASSES_FILE
        if not classes_path.is_file():
            raise UserError(f"{path} lacks {CLASSES_FILE}.", hint="Re-create the dataset.")
        classes = [line for line in classes_path.read_text().splitlines() if line.strip()]
        if len(set(classes)) != len(classes):
            raise UserError(f"{classes_path} lists a class twice.")
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise UserError(f"{path} lacks {MANIFEST_FILE}.", hint="Re-create the dataset.")
        videos = read_manifest_lines(manifest_path, tolerate_torn_tail=allow_incomplete)
        known = set(classes)
        seen: set[str] = set()
        for v in videos:
            if v.class_name not in known:
                raise UserError(f"{manifest_path}: video '{v.id}' has class '{v.class_name}', "
                                f"which {CLASSES_FILE} does not list.")
            if v.id in seen:
                raise UserError(f"{manifest_path}: video id '{v.id}' appears twice.")
            seen.add(v.id)
        return cls(path=path, meta=meta, classes=classes, videos=videos)

    # -- queries -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.videos)

    def __iter__(self) -> Iterator[VideoRecord]:
        return iter(self.videos)

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def fps(self) -> float | None:
        return self.meta.get("fps")

    def get(self, video_id: str) -> VideoRecord:
        try:
            return self._by_id[video_id]
        except KeyError:
            from lfdm_cli.errors import unknown_name_error

            raise unknown_name_error("video", video_id, self._by_id, where=str(self.path)) from None

    def label(self, record_or_class: VideoRecord | str) -> int:
        """The integer label of a record's class (its line in classes.txt)."""
        name = record_or_class.class_name if isinstance(record_or_class, VideoRecord) else record_or_class
        if name not in self._class_index:
            from lfdm_cli.errors import unknown_name_error

            raise unknown_name_error("class", name, self.classes, where=str(self.path))
        return self._class_index[name]

    def split(self, name: str) -> "Dataset":
        """The same dataset restricted to one split ('train' or 'test')."""
        if name not in SPLITS:
            from lfdm_cli.errors import unknown_name_error

            raise unknown_name_error("split", name, SPLITS)
        return Dataset(path=self.path, meta=self.meta, classes=self.classes,
                       videos=[v for v in self.videos if v.split == name])

    def subjects(self) -> list[str]:
        return sorted({v.subject for v in self.videos if v.subject is not None})

    # -- data ----------------------------------------------------------------------------------
    def load(self, video: str | VideoRecord, mmap: bool = True) -> np.ndarray:
        """A video's frames, uint8 (T, H, W, 3); memory-mapped read-only unless `mmap=False`."""
        record = self.get(video) if isinstance(video, str) else video
        file = self.path / record.file
        try:
            array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise UserError(f"Video '{record.id}' is missing its file {file}.",
                            hint="Re-run the command that made the dataset to restore it.") from None
        except ValueError as exc:
            raise UserError(f"{file} is not a readable .npy file ({exc}).",
                            hint="Delete it and re-run the command that made the dataset.") from None
        expected = (record.frames, record.height, record.width, 3)
        if array.dtype != np.uint8 or array.shape != expected:
            raise UserError(f"{file} holds {array.dtype} {array.shape}; the manifest says uint8 {expected}.",
                            hint="Delete it and re-run the command that made the dataset.")
        return array
