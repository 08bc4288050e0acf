"""A user's own videos: `SRC/<class>/<video file or frame folder>`, or a CSV/JSONL listing.

A listing has one row per video with `path` (relative to the listing's folder, or absolute) and
`class`, optionally `subject` and `split` (train/test). The split is taken from the listing when
every row has one; otherwise it is by subject when every video's subject is known (from the
listing or `--subject-pattern`), so that test subjects are unseen; otherwise by video, per class.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from lfdm_cli.data.dataset import SPLITS, safe_id
from lfdm_cli.data.importers.common import ImportPlan, Job, PlannedVideo, Skip, _n_test, split_by_subject, unique_ids
from lfdm_cli.errors import UserError

LISTING_SUFFIXES = (".csv", ".jsonl")


def _video_suffixes() -> tuple[str, ...]:
    from lfdm_cli.io import READ_SUFFIXES

    return tuple(READ_SUFFIXES)


def _scan_tree(src: Path) -> tuple[list[dict], list[Skip]]:
    rows, skipped = [], []
    suffixes = _video_suffixes()
    class_dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"{src} has no class folders.",
                        hint="Lay videos out as SRC/<class>/<video file or frame folder>, or pass a CSV/JSONL listing.")
    for class_dir in class_dirs:
        for item in sorted(class_dir.iterdir()):
            if item.name.startswith("."):
                continue
            rel = item.relative_to(src).as_posix()
            if item.is_dir() or item.suffix.lower() in suffixes:
                rows.append({"path": str(item), "rel": rel, "class": class_dir.name, "subject": None, "split": None})
            elif item.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
                skipped.append(Skip(rel, "a single image directly in a class folder; put a video's "
                                         "frames in a folder of their own"))
            # Anything else (notes, subtitles, thumbnails' sidecars) is not a video: ignored.
    return rows, skipped


def _read_listing(listing: Path) -> list[dict]:
    base = listing.parent
    try:
        text = listing.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"Could not read {listing}: {exc.strerror or exc}.") from None
    raw: list[tuple[int, dict]] = []
    if listing.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        fields = {f.strip().lower() for f in (reader.fieldnames or [])}
        if not {"path", "class"} <= fields:
            raise UserError(f"{listing}: the CSV header must name the columns 'path' and 'class' "
                            f"(optional: 'subject', 'split'); it has {sorted(fields)}.")
        for n, row in enumerate(reader, 2):
            raw.append((n, {k.strip().lower(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise UserError(f"{listing}, line {n}: not valid JSON.") from None
            if not isinstance(obj, dict):
                raise UserError(f"{listing}, line {n}: expected a JSON object with 'path' and 'class'.")
            raw.append((n, {str(k).lower(): v for k, v in obj.items()}))
    rows = []
    for n, row in raw:
        if not row.get("path") or not row.get("class"):
            raise UserError(f"{listing}, line {n}: 'path' and 'class' are required.")
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise UserError(f"{listing}, line {n}: split '{split}' is not one of {', '.join(SPLITS)}.")
        p = Path(str(row["path"]))
        full = p if p.is_absolute() else base / p
        subject = row.get("subject")
        rows.append({"path": str(full), "rel": str(row["path"]), "class": str(row["class"]).strip(),
                     "subject": None if subject in (None, "") else str(subject), "split": split})
    if not rows:
        raise UserError(f"{listing} lists no videos.")
    return rows


def _apply_subject_pattern(rows: list[dict], pattern: str) -> None:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise UserError(f"--subject-pattern {pattern!r} is not a valid regular expression ({exc}).") from None
    misses = []
    for row in rows:
        m = rx.search(row["rel"])
        if not m:
            misses.append(row["rel"])
            continue
        if "subject" in rx.groupindex:
            row["subject"] = m.group("subject")
        elif rx.groups:
            row["subject"] = m.group(1)
        else:
            row["subject"] = m.group(0)
    if misses:
        examples = ", ".join(misses[:3])
        raise UserError(f"--subject-pattern {pattern!r} matches no subject in {len(misses)} of "
                        f"{len(rows)} video names (e.g. {examples}).",
                        hint="The pattern is searched in each video's path relative to SRC; its first "
                             "group (or the group named 'subject') is the subject.")


def plan(src: str | Path, *, subject_pattern: str | None = None, test_fraction: float = 0.2,
         seed: int = 0) -> ImportPlan:
    src = Path(src)
    if not src.exists():
        raise UserError(f"Not found: {src}", hint="Give a folder SRC/<class>/<videos> or a .csv/.jsonl listing.")
    skipped: list[Skip] = []
    if src.is_file():
        if src.suffix.lower() not in LISTING_SUFFIXES:
            raise UserError(f"{src} is a file but not a listing ({', '.join(LISTING_SUFFIXES)}).",
                            hint="Give a folder SRC/<class>/<videos> or a CSV/JSONL listing of path,class[,subject,split].")
        rows = _read_listing(src)
    else:
        rows, skipped = _scan_tree(src)
    if subject_pattern:
        _apply_subject_pattern(rows, subject_pattern)
    _n_test(2, test_fraction)  # validates the fraction early

    if all(r["split"] for r in rows):
        split_mode = "listing"
    elif all(r["subject"] is not None for r in rows):
        split_mode = "subject"
        test_subjects = split_by_subject([r["subject"] for r in rows], test_fraction, seed)
        for r in rows:
            r["split"] = r["split"] or ("test" if r["subject"] in test_subjects else "train")
    else:
        split_mode = "video"
        by_class: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            if not r["split"]:
                by_class[r["class"]].append(r)
        rng = np.random.default_rng(seed)
        for cls in sorted(by_class):
            members = sorted(by_class[cls], key=lambda r: r["rel"])
            order = rng.permutation(len(members))
            n_test = _n_test(len(members), test_fraction)
            for rank, idx in enumerate(order):
                members[idx]["split"] = "test" if rank < n_test else "train"

    classes = sorted({r["class"] for r in rows})
    ids = unique_ids([safe_id(f"{r['class']}_{Path(r['rel']).stem}") for r in rows])
    jobs = [Job(path=r["path"], outputs=[PlannedVideo(id=i, split=r["split"], class_name=r["class"],
                                                      subject=r["subject"], source=r["rel"])])
            for r, i in zip(rows, ids)]
    return ImportPlan(importer="folder", source=str(src.resolve()), classes=classes, jobs=jobs,
                      skipped=skipped, options={"split": split_mode, "test_fraction": test_fraction,
                                                "seed": seed, "subject_pattern": subject_pattern})
