"""NATOPS aircraft handling signals: `gesture%02d/g%02ds%02d.avi` (320x240, 20 fps), each video one
subject repeating one gesture 20 times; `segmentation.txt` gives each repetition's frames.
"""

from __future__ import annotations

import re
from pathlib import Path

from lfdm_cli.data.importers.common import ImportPlan, Job, PlannedVideo, Skip
from lfdm_cli.errors import UserError

# The 24 gestures in the order of their numbers, as the authors name them (action_list in
# DM/datasets_natops.py, github.com/nihaomiao/CVPR23_LFDM).
CLASSES = [
    "I Have Command", "All Clear", "Not Clear", "Spread Wings", "Fold Wings", "Lock Wings",
    "Up Hook", "Down Hook", "Remove Tiedowns", "Remove Chocks", "Insert Chocks", "Move Ahead",
    "Turn Left", "Turn Right", "Next Marshaller", "Slow Down", "Stop", "Nosegear Steering",
    "Hot Brakes", "Brakes On", "Brakes Off", "Install Tiedowns", "Fire", "Cut Engine",
]

# The authors' subject split: split_train_test() in preprocessing/preprocess_NATOPS.py (same repo)
# shuffles the 20 subjects with seed 3407 and then removes subject 1; the lists are also the
# train_ID/test_ID of DM/datasets_natops.py. Subject 1 is left out of both.
TRAIN_SUBJECTS = (3, 4, 8, 9, 12, 13, 15, 17, 19, 20)
TEST_SUBJECTS = (2, 5, 6, 7, 10, 11, 14, 16, 18)

# Crop box of the authors' NATOPS loaders (y_min, y_max, x_min, x_max = 10, 239, 30, 290) on the
# 240x320 frames; frames of another size get the same crop scaled.
CROP = (10, 239, 30, 290)
CROP_REF = (240, 320)
FPS = 20.0

_VIDEO = re.compile(r"^g(\d{2})s(\d{2})\.avi$", re.IGNORECASE)
_SUBJECT_LINE = re.compile(r"^\s*//\s*subject\D*(\d+)?", re.IGNORECASE)
_GESTURE_LINE = re.compile(r"^\s*\d+\s*,\s*\d+\s*,\s*\d+")
_SEGMENT_LINE = re.compile(r"^\s*\d+\s*:\s*(\d+)\s*,\s*(\d+)")


def parse_segmentation(path: Path) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """{(subject, gesture): [(first, last), ...]} with 1-based inclusive frame numbers.

    The file has a block per subject opened by a '// Subject N' comment; inside it, one block per
    gesture (in gesture order 1..24) opened by a 'a,b,c' line and listing its repetitions as
    'k:first,last' lines. The gesture of a block is its position, as in the authors' parser
    (save_seg_dict() in preprocessing/preprocess_NATOPS.py); other lines are ignored.
    """
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise UserError(f"Could not read {path}: {exc.strerror or exc}.") from None
    table: dict[tuple[int, int], list[tuple[int, int]]] = {}
    subject = None
    n_subjects = 0
    gesture = 0
    for number, line in enumerate(lines, 1):
        m = _SUBJECT_LINE.match(line)
        if m:
            n_subjects += 1
            subject = int(m.group(1)) if m.group(1) else n_subjects
            gesture = 0
            continue
        if subject is None:
            continue
        if _GESTURE_LINE.match(line):
            gesture += 1
            table.setdefault((subject, gesture), [])
            continue
        m = _SEGMENT_LINE.match(line)
        if m and gesture:
            first, last = int(m.group(1)), int(m.group(2))
            if last < first:
                raise UserError(f"{path}, line {number}: segment {first},{last} ends before it starts.")
            table[(subject, gesture)].append((first, last))
    if not table:
        raise UserError(f"{path} is not a NATOPS segmentation file: no '// Subject' blocks with "
                        "'k:first,last' segment lines were found.")
    return table


def _find(src: Path, name: str) -> Path | None:
    for candidate in (src / name, src / "data" / name):
        if candidate.exists():
            return candidate
    return next(iter(sorted(src.rglob(name))), None)


def plan(src: str | Path) -> ImportPlan:
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"NATOPS folder not found: {src}",
                        hint="Give the folder that holds gesture01/ ... gesture24/ and segmentation.txt.")
    seg_path = _find(src, "segmentation.txt")
    if seg_path is None:
        raise UserError(f"No segmentation.txt found under {src}.",
                        hint="It ships with NATOPS next to the gesture folders; it says where each repetition starts and ends.")
    segments = parse_segmentation(seg_path)
    split_of = {s: "train" for s in TRAIN_SUBJECTS} | {s: "test" for s in TEST_SUBJECTS}
    jobs, skipped, excluded = [], [], []
    videos = sorted(p for p in src.rglob("*.avi") if _VIDEO.match(p.name) and p.parent.name.lower().startswith("gesture"))
    if not videos:
        raise UserError(f"No NATOPS RGB videos (gesture%02d/g%02ds%02d.avi) found under {src}.")
    for path in videos:
        g, s = (int(x) for x in _VIDEO.match(path.name).groups())
        rel = path.relative_to(src).as_posix()
        if not 1 <= g <= len(CLASSES):
            skipped.append(Skip(rel, f"gesture {g} is not one of 1..{len(CLASSES)}"))
            continue
        if s not in split_of:
            excluded.append(Skip(rel, "subject not in the authors' split (subject 1 is left out)"))
            continue
        segs = segments.get((s, g))
        if not segs:
            skipped.append(Skip(rel, f"{seg_path.name} has no repetitions for subject {s}, gesture {g}"))
            continue
        outputs = [PlannedVideo(id=f"g{g:02d}s{s:02d}p{k:02d}", split=split_of[s], class_name=CLASSES[g - 1],
                                subject=f"s{s:02d}", source=f"{rel}#frames={first}-{last}",
                                frame_range=(first - 1, last))
                   for k, (first, last) in enumerate(segs, 1)]
        jobs.append(Job(path=str(path), crop=CROP, crop_ref=CROP_REF, outputs=outputs))
    return ImportPlan(importer="natops", source=str(src.resolve()), classes=list(CLASSES), jobs=jobs,
                      skipped=skipped, excluded=excluded, fps=FPS,
                      options={"segmentation": seg_path.relative_to(src).as_posix()})
