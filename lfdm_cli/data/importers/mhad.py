"""UTD-MHAD (RGB): `a{action}_s{subject}_t{trial}_color.avi`, 480x640 frames at 30 fps."""

from __future__ import annotations

import re
from pathlib import Path

from lfdm_cli.data.importers.common import ImportPlan, Job, PlannedVideo, Skip
from lfdm_cli.errors import UserError

# The 27 actions, in the order of their numbers a1..a27, as the authors name them
# (action_list in DM/datasets_mhad.py, github.com/nihaomiao/CVPR23_LFDM).
CLASSES = [
    "right arm swipe to the left", "right arm swipe to the right", "right hand wave",
    "two hand front clap", "right arm throw", "cross arms in the chest", "basketball shooting",
    "draw x", "draw circle clockwise", "draw circle counter clockwise", "draw triangle",
    "right hand bowling", "front boxing", "baseball swing from right", "tennis forehand swing",
    "two arms curl", "tennis serve", "two hand push", "knock on door", "hand catch",
    "pick up and throw", "jogging", "walking", "sit to stand", "stand to sit",
    "forward lunge (left foot forward)", "squat",
]

# Subject split from split_train_test_MHAD() in preprocessing/preprocess_MHAD.py (same repo):
# two men and two women on each side.
TRAIN_SUBJECTS = (1, 2, 3, 5)
TEST_SUBJECTS = (4, 6, 7, 8)

# The authors' crop (crop_video()/save_crop_image() in preprocessing/preprocess_MHAD.py): the
# union of the depth-map foreground boxes, doubled to RGB resolution -> rows 0:480, cols 156:492
# of the 480x640 frame. Frames of another size get the same crop scaled.
CROP = (0, 480, 156, 492)
CROP_REF = (480, 640)
FPS = 30.0

_NAME = re.compile(r"^a(\d+)_s(\d+)_t(\d+)_color\.avi$", re.IGNORECASE)


def plan(src: str | Path) -> ImportPlan:
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"UTD-MHAD folder not found: {src}",
                        hint="Give the folder that holds a{a}_s{s}_t{t}_color.avi (e.g. RGB/).")
    split_of = {s: "train" for s in TRAIN_SUBJECTS} | {s: "test" for s in TEST_SUBJECTS}
    jobs, skipped, excluded = [], [], []
    files = sorted((p for p in src.rglob("*") if _NAME.match(p.name) and p.is_file()),
                   key=lambda p: tuple(int(x) for x in _NAME.match(p.name).groups()))
    seen: set[tuple] = set()
    for path in files:
        a, s, t = (int(x) for x in _NAME.match(path.name).groups())
        rel = path.relative_to(src).as_posix()
        if not 1 <= a <= len(CLASSES):
            skipped.append(Skip(rel, f"action a{a} is not one of a1..a{len(CLASSES)}"))
            continue
        if s not in split_of:
            excluded.append(Skip(rel, "subject not in the authors' split (s1..s8)"))
            continue
        if (a, s, t) in seen:
            skipped.append(Skip(rel, f"a second copy of a{a}_s{s}_t{t}"))
            continue
        seen.add((a, s, t))
        jobs.append(Job(path=str(path), crop=CROP, crop_ref=CROP_REF, outputs=[PlannedVideo(
            id=f"a{a}_s{s}_t{t}", split=split_of[s], class_name=CLASSES[a - 1], subject=f"s{s}",
            source=rel)]))
    if not files:
        raise UserError(f"No UTD-MHAD RGB videos (a{{a}}_s{{s}}_t{{t}}_color.avi) found under {src}.")
    return ImportPlan(importer="mhad", source=str(src.resolve()), classes=list(CLASSES), jobs=jobs,
                      skipped=skipped, excluded=excluded, fps=FPS)
