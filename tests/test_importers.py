"""Importers on small fake MUG, UTD-MHAD, NATOPS and folder trees built in tmp_path.

Videos are real files: AVIs written by ffmpeg (imageio-ffmpeg, MJPEG at top quality with full
chroma, so colours survive within a few levels), mp4/gif through lfdm_cli.io, PNG frame folders.
MHAD and NATOPS videos are written at a tenth/fifth of their real frame size (64x48): the crop
boxes are defined on the real sizes and scale with the frame, which these tests also check.
"""

import json

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from lfdm_cli.data.dataset import Dataset
from lfdm_cli.data.importers import folder, mhad, mug, natops
from lfdm_cli.data.importers.common import run_import, scaled_crop
from lfdm_cli.errors import UserError
from lfdm_cli.io import write_video

RED = (200, 30, 60)
BLUE = (20, 40, 200)


def write_avi(path, frames, fps=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    gen = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="mjpeg", pix_fmt_out="yuvj444p",
                                      quality=None, output_params=["-q:v", "1"], macro_block_size=1,
                                      ffmpeg_log_level="error")
    gen.send(None)
    for f in frames:
        gen.send(np.ascontiguousarray(f))
    gen.close()


def solid(t, h, w, rgb):
    return np.broadcast_to(np.array(rgb, np.uint8), (t, h, w, 3)).copy()


def write_frames(folder_path, frames):
    folder_path.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder_path / f"img_{i:04d}.png")


def manifest(out):
    return {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def convert(plan, out, **kw):
    kw.setdefault("size", 32)
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return run_import(plan, out, **kw)


# ------------------------------------------------------------------------------------- MUG


@pytest.fixture
def mug_src(tmp_path):
    src = tmp_path / "MUG"
    write_frames(src / "001/anger/take000", solid(4, 30, 40, RED))
    (src / "001/anger/take000/take000.avi").write_bytes(b"not a video")   # MUG ships these; ignored
    (src / "001/anger/take000/Thumbs.db").write_bytes(b"\0\1")
    write_frames(src / "008/happiness/take000", solid(3, 30, 40, BLUE))
    write_frames(src / "008/happiness/take001", solid(5, 30, 40, BLUE))
    write_frames(src / "002/session0/fear/take000", solid(3, 30, 40, RED))
    write_frames(src / "002/session1/fear/take000", solid(3, 30, 40, RED))
    write_frames(src / "999/neutral/take000", solid(3, 30, 40, RED))       # not in the authors' split
    write_frames(src / "008/contempt/take000", solid(3, 30, 40, RED))      # not a MUG expression
    write_frames(src / "001/surprise/take000", solid(2, 30, 40, RED))
    (src / "001/surprise/take000/img_0001.png").write_bytes(b"\x89PNG broken")  # corrupt frame
    return src


def test_mug(mug_src, tmp_path):
    out = tmp_path / "out"
    s = convert(mug.plan(mug_src), out)
    recs = manifest(out)
    assert sorted(recs) == ["001_anger_take000", "002_session0_fear_take000", "002_session1_fear_take000",
                            "008_happiness_take000", "008_happiness_take001"]
    assert recs["001_anger_take000"]["split"] == "test" and recs["008_happiness_take001"]["split"] == "train"
    assert recs["002_session1_fear_take000"] == {
        "id": "002_session1_fear_take000", "split": "test", "class": "fear", "subject": "002", "frames": 3,
        "height": 32, "width": 32, "source": "002/session1/fear/take000",
        "file": "videos/002_session1_fear_take000.npy"}
    assert (out / "classes.txt").read_text().split("\n")[:7] == mug.CLASSES
    assert {x.source for x in s.skipped} == {"008/contempt", "001/surprise/take000"}
    assert any("img_0001.png" in x.reason for x in s.skipped)
    assert [x.source for x in s.excluded] == ["999/neutral/take000"]
    ds = Dataset.open(out)
    assert ds.fps == 19.0
    v = ds.load("001_anger_take000")
    # 40x30 padded into 32x32: a 32x24 picture on rows 4..27, black bars above and below.
    assert v.shape == (4, 32, 32, 3)
    assert np.abs(v[:, 4:28].astype(int) - RED).max() <= 1
    assert (v[:, :4] == 0).all() and (v[:, 28:] == 0).all()
    crop = convert(mug.plan(mug_src), tmp_path / "crop", fit="crop")
    assert crop.videos == 5
    assert np.abs(Dataset.open(tmp_path / "crop").load("001_anger_take000").astype(int) - RED).max() <= 1


def test_mug_split_lists():
    assert len(mug.TRAIN_SUBJECTS) == len(mug.TEST_SUBJECTS) == 26
    assert not set(mug.TRAIN_SUBJECTS) & set(mug.TEST_SUBJECTS)


# ------------------------------------------------------------------------------------ MHAD


def test_mhad_crop_scales():
    assert scaled_crop((480, 640), mhad.CROP, mhad.CROP_REF) == (0, 480, 156, 492)
    assert scaled_crop((48, 64), mhad.CROP, mhad.CROP_REF) == (0, 48, 16, 49)
    assert scaled_crop((240, 320), natops.CROP, natops.CROP_REF) == (10, 239, 30, 290)


def test_mhad(tmp_path):
    src = tmp_path / "UTD-MHAD"
    frames = solid(6, 48, 64, BLUE)
    frames[:, :, 16:49] = RED              # what the authors' crop keeps (cols 156:492 of 640)
    for name in ("a1_s1_t1", "a27_s4_t2", "a3_s9_t1", "a30_s2_t1"):
        write_avi(src / "RGB" / f"{name}_color.avi", frames)
    (src / "RGB" / "readme.txt").write_text("ignored")
    s = convert(mhad.plan(src), tmp_path / "out")
    recs = manifest(tmp_path / "out")
    assert sorted(recs) == ["a1_s1_t1", "a27_s4_t2"]
    assert recs["a1_s1_t1"]["class"] == "right arm swipe to the left" and recs["a1_s1_t1"]["split"] == "train"
    assert recs["a27_s4_t2"]["class"] == "squat" and recs["a27_s4_t2"]["split"] == "test"
    assert recs["a27_s4_t2"]["subject"] == "s4" and recs["a27_s4_t2"]["source"] == "RGB/a27_s4_t2_color.avi"
    assert [x.source for x in s.skipped] == ["RGB/a30_s2_t1_color.avi"]
    assert [x.source for x in s.excluded] == ["RGB/a3_s9_t1_color.avi"]
    assert len((tmp_path / "out" / "classes.txt").read_text().splitlines()) == 27
    v = Dataset.open(tmp_path / "out").load("a1_s1_t1")
    # The 33x48 crop padded into 32x32 sits on cols 5..26; no blue survives the crop.
    assert v.shape == (6, 32, 32, 3)
    assert np.abs(v[:, :, 7:25].astype(int) - RED).max() <= 12
    assert (v[:, :, :4] == 0).all() and (v[:, :, 28:] == 0).all()


# ---------------------------------------------------------------------------------- NATOPS


def _segmentation(entries):
    """entries: {(subject, gesture): [(first, last), ...]} -> NATOPS-style segmentation.txt text."""
    lines = ["// NATOPS gesture segmentation (fake)"]
    for s in range(1, 21):
        lines.append(f"// Subject {s}")
        for g in range(1, 25):
            segs = entries.get((s, g), [])
            lines.append(f"{s},{g},{len(segs)}")
            lines += [f"{k}:{a},{b}" for k, (a, b) in enumerate(segs, 1)]
    return "\n".join(lines) + "\n"


def test_natops(tmp_path):
    src = tmp_path / "NATOPS" / "data"
    frames = solid(15, 48, 64, (100, 0, 100))
    frames[:, :, :, 1] = (np.arange(15) * 10)[:, None, None]    # frame i has green level 10 i
    write_avi(src / "gesture01" / "g01s03.avi", frames, fps=20)
    write_avi(src / "gesture01" / "g01s03m.avi", frames[:2], fps=20)    # mask video: not RGB, ignored
    write_avi(src / "gesture24" / "g24s02.avi", frames, fps=20)
    write_avi(src / "gesture01" / "g01s01.avi", frames, fps=20)          # subject 1: left out
    write_avi(src / "gesture02" / "g02s05.avi", frames, fps=20)          # no segmentation entry
    (src / "segmentation.txt").write_text(_segmentation({
        (3, 1): [(3, 7), (10, 12), (14, 20)], (2, 24): [(1, 15)], (1, 1): [(1, 4)]}))
    s = convert(natops.plan(tmp_path / "NATOPS"), tmp_path / "out", min_frames=4)
    recs = manifest(tmp_path / "out")
    assert sorted(recs) == ["g01s03p01", "g24s02p01"]
    assert recs["g01s03p01"] == {"id": "g01s03p01", "split": "train", "class": "I Have Command",
                                 "subject": "s03", "frames": 5, "height": 32, "width": 32,
                                 "source": "data/gesture01/g01s03.avi#frames=3-7", "file": "videos/g01s03p01.npy"}
    assert recs["g24s02p01"]["class"] == "Cut Engine" and recs["g24s02p01"]["split"] == "test"
    reasons = {x.id or x.source: x.reason for x in s.skipped}
    assert "too short: 3 frame(s)" in reasons["g01s03p02"]
    assert "outside the video's 15 frames" in reasons["g01s03p03"]
    assert "no repetitions for subject 5, gesture 2" in reasons["data/gesture02/g02s05.avi"]
    assert [x.source for x in s.excluded] == ["data/gesture01/g01s01.avi"]
    v = Dataset.open(tmp_path / "out").load("g01s03p01")
    # Frames 3..7 (1-based, inclusive) are source indices 2..6: green levels 20..60.
    assert np.abs(v[:, 16, 16, 1].astype(int) - [20, 30, 40, 50, 60]).max() <= 4


def test_natops_bad_segmentation(tmp_path):
    src = tmp_path / "N"
    write_avi(src / "gesture01" / "g01s03.avi", solid(3, 48, 64, RED))
    (src / "segmentation.txt").write_text("hello\n")
    with pytest.raises(UserError, match="not a NATOPS segmentation file"):
        natops.plan(src)
    (src / "segmentation.txt").unlink()
    with pytest.raises(UserError, match="No segmentation.txt"):
        natops.plan(src)


# ---------------------------------------------------------------------------------- folders


@pytest.fixture
def clips(tmp_path):
    src = tmp_path / "clips"
    write_video(src / "jump" / "p01_a.mp4", solid(6, 32, 48, RED), fps=10)
    write_frames(src / "jump" / "p02_b", solid(5, 32, 48, BLUE))
    write_video(src / "wave" / "p01_c.gif", solid(4, 32, 48, BLUE), fps=10)
    write_video(src / "wave" / "p03_d.mp4", solid(7, 32, 48, RED), fps=10)
    (src / "wave" / "p02_broken.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    (src / "wave" / "notes.txt").write_text("not a video")
    return src


def test_folder_tree_subject_split(clips, tmp_path):
    s = convert(folder.plan(clips, subject_pattern=r"p(\d+)_", test_fraction=0.34, seed=1), tmp_path / "out")
    recs = manifest(tmp_path / "out")
    assert sorted(recs) == ["jump_p01_a", "jump_p02_b", "wave_p01_c", "wave_p03_d"]
    assert [x.source for x in s.skipped] == ["wave/p02_broken.mp4"]
    assert {r["subject"] for r in recs.values()} == {"01", "02", "03"}
    by_subject = {}
    for r in recs.values():
        by_subject.setdefault(r["subject"], set()).add(r["split"])
    assert all(len(v) == 1 for v in by_subject.values())                 # no subject on both sides
    assert sum(v == {"test"} for v in by_subject.values()) == 1           # round(0.34 * 3) = 1
    assert (tmp_path / "out" / "classes.txt").read_text() == "jump\nwave\n"
    ds = Dataset.open(tmp_path / "out")
    assert np.abs(ds.load("jump_p02_b")[:, 8:24].astype(int) - BLUE).max() <= 1      # PNG: lossless
    assert np.abs(ds.load("jump_p01_a")[:, 12:20, 8:24].astype(int) - RED).max() <= 8  # H.264


def test_folder_video_split_and_pattern_errors(clips, tmp_path):
    plan = folder.plan(clips, test_fraction=0.5, seed=0)
    assert plan.options["split"] == "video"
    splits = {o.id: o.split for j in plan.jobs for o in j.outputs}
    # Per class: round(0.5 * 2) = 1 of jump's 2 videos, round(0.5 * 3) = 2 of wave's 3.
    assert sum(splits[k] == "test" for k in splits if k.startswith("jump")) == 1
    assert sum(splits[k] == "test" for k in splits if k.startswith("wave")) == 2
    with pytest.raises(UserError, match="matches no subject in 1 of 5"):
        folder.plan(clips, subject_pattern=r"p(\d+)_[a-c]")
    with pytest.raises(UserError, match="not a valid regular expression"):
        folder.plan(clips, subject_pattern="p(")


def test_folder_listings(clips, tmp_path):
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,class,subject\n"
                        "clips/jump/p01_a.mp4,jump,anna\n"
                        "clips/jump/p02_b,jump,bob\n"
                        f"{clips / 'wave' / 'p03_d.mp4'},wave,carl\n"
                        "clips/wave/p01_c.gif,wave,anna\n")
    s = convert(folder.plan(csv_path, test_fraction=0.3, seed=0), tmp_path / "csv")
    recs = manifest(tmp_path / "csv")
    assert s.videos == 4 and not s.skipped
    test_subjects = {r["subject"] for r in recs.values() if r["split"] == "test"}
    assert len(test_subjects) == 1 and not test_subjects & {r["subject"] for r in recs.values() if r["split"] == "train"}
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text('{"path": "clips/jump/p01_a.mp4", "class": "jump", "split": "test"}\n'
                     '{"path": "clips/wave/p03_d.mp4", "class": "wave", "split": "train"}\n')
    convert(folder.plan(jsonl), tmp_path / "jsonl")
    assert {k: r["split"] for k, r in manifest(tmp_path / "jsonl").items()} == {"jump_p01_a": "test", "wave_p03_d": "train"}
    (tmp_path / "bad.csv").write_text("file,label\nx,y\n")
    with pytest.raises(UserError, match="must name the columns 'path' and 'class'"):
        folder.plan(tmp_path / "bad.csv")


def test_resume_and_refusals(clips, tmp_path):
    out = tmp_path / "out"
    first = convert(folder.plan(clips), out)
    assert first.converted == 4 and first.reused == 0
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}
    again = convert(folder.plan(clips), out)
    assert again.converted == 0 and again.reused == 4 and len(again.skipped) == 1
    assert {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()} == mtimes
    # An interrupted run: one video lost, a torn manifest line and a stray temp file.
    (out / "videos" / "wave_p03_d.npy").unlink()
    with open(out / "manifest.jsonl", "a") as fh:
        fh.write('{"id": "wave_p0')
    (out / "videos" / ".jump_p01_a.npy.x1y2.partial.npy").write_bytes(b"junk")
    third = convert(folder.plan(clips), out)
    assert third.converted == 1 and third.reused == 3 and third.removed == 1
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(mtimes)
    assert len(Dataset.open(out)) == 4

    with pytest.raises(UserError, match="made by 'folder' at size 32"):
        convert(folder.plan(clips), out, size=64)
    other = tmp_path / "notmine"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="not empty and is not an lfdm dataset"):
        convert(folder.plan(clips), other)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_worker_processes_match_inline(clips, tmp_path):
    convert(folder.plan(clips), tmp_path / "one", workers=1)
    convert(folder.plan(clips), tmp_path / "two", workers=2)
    a, b = Dataset.open(tmp_path / "one"), Dataset.open(tmp_path / "two")
    assert [v.to_json() for v in a.videos] == [v.to_json() for v in b.videos]
    for v in a.videos:
        assert np.array_equal(a.load(v), b.load(v.id))


def test_strict_cli(clips, tmp_path, lfdm):
    out = tmp_path / "out"
    res = lfdm("preprocess", "folder", clips, out, "--size", "16", "--workers", "1", "--strict", "-q")
    assert res.returncode == 2, res.stderr
    assert "--strict: 1 video(s) were skipped" in res.stderr and "p02_broken.mp4" in res.stderr
    assert "Traceback" not in res.stderr
    with pytest.raises(UserError, match="incomplete"):
        Dataset.open(out)
    res = lfdm("preprocess", "folder", clips, out, "--size", "16", "--workers", "1", "--json", "-q")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["converted"] == 0 and summary["reused"] == 4 and summary["videos"] == 4
    assert [s["source"] for s in summary["skipped"]] == ["wave/p02_broken.mp4"]
    assert len(Dataset.open(out)) == 4
