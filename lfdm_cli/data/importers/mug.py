"""MUG Facial Expression Database: `<subject>/<expression>/<take>/<frame images>`.

Three subjects (002, 003, 049) have an extra `session0|session1` level between subject and
expression. Take folders also hold the original .avi and other files; only image frames are read.
"""

from __future__ import annotations

import re
from pathlib import Path

from lfdm_cli.data.dataset import safe_id
from lfdm_cli.data.importers.common import ImportPlan, Job, PlannedVideo, Skip
from lfdm_cli.errors import UserError

CLASSES = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]

# The authors' subject split (26 train / 26 test), from the comment at the end of
# preprocessing/preprocess_MUG.py in github.com/nihaomiao/CVPR23_LFDM (a seeded shuffle of the
# 52 subjects that have expression sequences); the same lists appear in LFAE/mug_dataset.py.
TRAIN_SUBJECTS = ("008", "017", "021", "028", "030", "031", "034", "036", "037",
                  "038", "039", "042", "043", "044", "045", "055", "060", "061",
                  "062", "063", "071", "075", "076", "077", "083", "084")
TEST_SUBJECTS = ("001", "002", "006", "007", "010", "013", "014", "020", "027", "032",
                 "033", "040", "046", "048", "049", "052", "064", "065", "066", "070",
                 "072", "073", "074", "078", "079", "082")

# MUG records at 19 frames per second.
FPS = 19.0

_SESSION = re.compile(r"session\d+$", re.IGNORECASE)


def _dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def plan(src: str | Path) -> ImportPlan:
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"MUG folder not found: {src}", hint="Give the folder that holds the subject folders (001, 002, ...).")
    split_of = {s: "train" for s in TRAIN_SUBJECTS} | {s: "test" for s in TEST_SUBJECTS}
    jobs: list[Job] = []
    skipped: list[Skip] = []
    excluded: list[Skip] = []
    for subject_dir in _dirs(src):
        subject = subject_dir.name
        # Sessions (if any) sit between subject and expression.
        expr_dirs: list[tuple[str | None, Path]] = []
        for child in _dirs(subject_dir):
            if _SESSION.match(child.name):
                expr_dirs += [(child.name, d) for d in _dirs(child)]
            else:
                expr_dirs.append((None, child))
        for session, expr_dir in expr_dirs:
            rel_expr = expr_dir.relative_to(src).as_posix()
            if expr_dir.name not in CLASSES:
                skipped.append(Skip(rel_expr, f"'{expr_dir.name}' is not a MUG expression "
                                              f"({', '.join(CLASSES)})"))
                continue
            for take_dir in _dirs(expr_dir):
                rel = take_dir.relative_to(src).as_posix()
                if subject not in split_of:
                    excluded.append(Skip(rel, "subject not in the authors' 52-subject split"))
                    continue
                parts = [subject] + ([session] if session else []) + [expr_dir.name, take_dir.name]
                jobs.append(Job(path=str(take_dir), outputs=[PlannedVideo(
                    id=safe_id("_".join(parts)), split=split_of[subject], class_name=expr_dir.name,
                    subject=subject, source=rel)]))
    if not jobs and not skipped and not excluded:
        raise UserError(f"{src} does not look like MUG: no <subject>/<expression>/<take> folders found.",
                        hint="Expected e.g. SRC/001/happiness/take000/img_0000.jpg.")
    return ImportPlan(importer="mug", source=str(src.resolve()), classes=list(CLASSES), jobs=jobs,
                      skipped=skipped, excluded=excluded, fps=FPS)
