"""Which videos of a dataset split an evaluation uses, and the names that identify data and model.

`--videos N` takes the first N videos of one fixed shuffle of the split (seed 0, independent of
the sampling seed). A shuffle rather than the manifest's first N, because manifests are ordered by
subject and class and their head is not representative; a fixed one, so that a larger N extends a
smaller one and the generation evaluation can reuse the videos it already made.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from lfdm_cli.data.dataset import CLASSES_FILE, MANIFEST_FILE, Dataset, VideoRecord
from lfdm_cli.errors import UserError

SELECTION_SEED = 0
SELECTION_RULE = (f"the split's videos in one fixed shuffle of the manifest order (numpy default_rng"
                  f"({SELECTION_SEED}).permutation); --videos N takes the first N")


def open_split(path: str | Path, split: str) -> Dataset:
    """The split of a dataset folder, refusing an empty one."""
    ds = Dataset.open(path).split(split)
    if len(ds) == 0:
        raise UserError(f"{path}: the '{split}' split holds no videos.",
                        hint="`lfdm data info DATA` shows the split sizes.")
    return ds


def select_videos(ds: Dataset, videos: int | None) -> list[VideoRecord]:
    """The evaluated videos, in evaluation order (see the module docstring)."""
    if videos is not None and videos < 1:
        raise UserError(f"--videos must be at least 1, got {videos}.")
    order = np.random.default_rng(SELECTION_SEED).permutation(len(ds.videos))
    chosen = [ds.videos[int(i)] for i in order]
    if videos is not None:
        chosen = chosen[:videos]
    return chosen


def dataset_digest(path: str | Path) -> str:
    """Short hash of the manifest and class list: which videos, classes and splits a dataset holds
    (video contents are not hashed: they are written once and never change)."""
    h = hashlib.sha256()
    for name in (MANIFEST_FILE, CLASSES_FILE):
        h.update(name.encode())
        h.update((Path(path) / name).read_bytes())
    return h.hexdigest()[:16]


def describe_dataset(ds: Dataset, split: str, chosen: list[VideoRecord]) -> dict[str, Any]:
    return {"path": str(Path(ds.path).resolve()), "digest": dataset_digest(ds.path), "split": split,
            "split_videos": len(ds.videos), "videos": len(chosen), "selection": SELECTION_RULE,
            "size": ds.size}


def model_name(path: str | Path | None) -> str:
    """A model folder's name for tables and work folders; training runs end in `RUN_DIR/model/`,
    so such a folder is named after its run."""
    if path is None:
        return "model"
    p = Path(path).resolve()
    return p.parent.name if p.name == "model" and p.parent.name else p.name
