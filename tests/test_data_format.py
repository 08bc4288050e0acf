"""The dataset format: writing through the import engine, reading with Dataset, and what a folder
that is not (or no longer) a valid dataset gives."""

import json

import numpy as np
import pytest

from lfdm_cli.data.dataset import Dataset, VideoRecord, is_dataset_dir, npy_shape, save_video_array
from lfdm_cli.data.importers.common import ImportPlan, Job, PlannedVideo, run_import
from lfdm_cli.errors import UserError


def _solid(job):
    """Job loader for tests: job.args = (frames, height, width, rgb)."""
    t, h, w, rgb = job.args
    return np.broadcast_to(np.array(rgb, np.uint8), (t, h, w, 3)).copy()


def _plan(videos):
    """videos: list of (id, split, class, subject, frames, rgb)."""
    jobs = [Job(path=f"mem:{vid}", load=_solid, args=(t, 12, 20, rgb),
                outputs=[PlannedVideo(id=vid, split=split, class_name=cls, subject=subj, source=f"mem:{vid}")])
            for vid, split, cls, subj, t, rgb in videos]
    return ImportPlan(importer="test", source="memory", classes=["cat", "dog"], jobs=jobs, fps=10.0)


VIDEOS = [("a1", "train", "cat", "p1", 5, (255, 0, 0)),
          ("a2", "train", "dog", "p1", 7, (0, 255, 0)),
          ("b1", "test", "cat", "p2", 3, (0, 0, 255)),
          ("b2", "test", "dog", None, 4, (10, 20, 30))]


@pytest.fixture
def dataset(tmp_path):
    run_import(_plan(VIDEOS), tmp_path / "ds", size=16, fit="pad", workers=1, progress=False)
    return tmp_path / "ds"


def test_layout_and_manifest(dataset):
    assert is_dataset_dir(dataset)
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["format"] == "lfdm-dataset" and meta["format_version"] == 1
    assert meta["size"] == 16 and meta["fit"] == "pad" and meta["importer"] == "test"
    assert meta["complete"] is True and meta["counts"] == {"videos": 4, "train": 2, "test": 2, "frames": 19}
    assert {"created", "lfdm_version", "fps"} <= set(meta)
    assert (dataset / "classes.txt").read_text() == "cat\ndog\n"
    lines = [json.loads(l) for l in (dataset / "manifest.jsonl").read_text().splitlines()]
    assert [l["id"] for l in lines] == ["a1", "a2", "b1", "b2"]          # sorted by id
    assert lines[0] == {"id": "a1", "split": "train", "class": "cat", "subject": "p1", "frames": 5,
                        "height": 16, "width": 16, "source": "mem:a1", "file": "videos/a1.npy"}
    assert lines[3]["subject"] is None
    assert sorted(p.name for p in (dataset / "videos").iterdir()) == ["a1.npy", "a2.npy", "b1.npy", "b2.npy"]


def test_reader(dataset):
    ds = Dataset.open(dataset)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4 and ds.size == 16 and ds.fps == 10.0
    assert [v.id for v in ds.split("train").videos] == ["a1", "a2"]
    assert [v.id for v in ds.split("test")] == ["b1", "b2"]
    assert ds.label(ds.get("a2")) == 1 and ds.label("cat") == 0
    assert ds.subjects() == ["p1", "p2"]
    arr = ds.load("a1")
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    assert arr.shape == (5, 16, 16, 3) and arr.dtype == np.uint8
    # Pad: a 20x12 frame becomes 16x10 centred (rows 3..12), black above and below.
    assert (arr[:, 3:13] == (255, 0, 0)).all() and (arr[:, :3] == 0).all() and (arr[:, 13:] == 0).all()
    full = ds.load(ds.get("b1"), mmap=False)
    assert not isinstance(full, np.memmap) and (full[:, 8, 8] == (0, 0, 255)).all()
    with pytest.raises(UserError, match="Unknown split"):
        ds.split("val")
    with pytest.raises(UserError, match="Unknown video 'zz'"):
        ds.load("zz")


def test_not_a_dataset(tmp_path):
    with pytest.raises(UserError, match="not found"):
        Dataset.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="is not an lfdm dataset"):
        Dataset.open(tmp_path / "plain")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.json").write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="lacks the 'lfdm-dataset' marker"):
        Dataset.open(tmp_path / "other")
    f = tmp_path / "file.npy"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match="is a file"):
        Dataset.open(f)


def test_damaged_datasets(dataset):
    meta = json.loads((dataset / "meta.json").read_text())
    meta["format_version"] = 99
    (dataset / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="format version 99"):
        Dataset.open(dataset)
    meta["format_version"] = 1
    meta["complete"] = False
    (dataset / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="incomplete"):
        Dataset.open(dataset)
    assert len(Dataset.open(dataset, allow_incomplete=True)) == 4
    meta["complete"] = True
    (dataset / "meta.json").write_text(json.dumps(meta))

    manifest = dataset / "manifest.jsonl"
    good = manifest.read_text()
    manifest.write_text(good.replace('"class": "dog"', '"class": "cow"', 1))
    with pytest.raises(UserError, match="class 'cow'"):
        Dataset.open(dataset)
    manifest.write_text(good + "{not json\n")
    with pytest.raises(UserError, match="line 5: not valid JSON"):
        Dataset.open(dataset)
    manifest.write_text(good.replace('"split": "test"', '"split": "val"', 1))
    with pytest.raises(UserError, match="split 'val'"):
        Dataset.open(dataset)
    manifest.write_text(good)

    ds = Dataset.open(dataset)
    (dataset / "videos" / "a2.npy").unlink()
    with pytest.raises(UserError, match="missing its file"):
        ds.load("a2")
    save_video_array(dataset / "videos" / "b1.npy", np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(UserError, match="the manifest says"):
        ds.load("b1")


def test_atomic_npy_and_header_check(tmp_path):
    p = tmp_path / "v.npy"
    save_video_array(p, np.ones((3, 4, 5, 3), np.uint8))
    assert npy_shape(p) == (3, 4, 5, 3)
    assert [f.name for f in tmp_path.iterdir()] == ["v.npy"]          # no temp file left behind
    p.write_bytes(p.read_bytes()[:-10])                               # a torn write
    assert npy_shape(p) is None
    with pytest.raises(ValueError):
        save_video_array(p, np.ones((3, 4, 5, 3), np.float32))


def test_record_round_trip():
    r = VideoRecord(id="x", split="train", class_name="c", subject=None, frames=2, height=8, width=8,
                    source="s", file="videos/x.npy")
    assert VideoRecord.from_json(r.to_json()) == r
    with pytest.raises(UserError, match="lacks frames"):
        VideoRecord.from_json({k: v for k, v in r.to_json().items() if k != "frames"}, where="m")


def cli(capsys, *args):
    """Run the lfdm CLI in this process (no interpreter start-up); returns (exit code, out, err)."""
    from lfdm_cli.cli.app import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_data_info_and_preview_cli(dataset, tmp_path, capsys, lfdm):
    code, stdout, stderr = cli(capsys, "data", "info", dataset, "--json")
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["videos"] == 4 and info["complete"] is True
    assert info["classes"] == {"cat": {"train": 1, "test": 1}, "dog": {"train": 1, "test": 1}}
    assert info["splits"]["train"] == {"videos": 2, "frames": 12, "subjects": 1}
    assert info["subjects"]["(unknown)"] == {"split": "test", "videos": 1}
    assert info["frames"] == {"total": 19, "min": 3, "max": 7, "mean": 4.75, "median": 4.5}

    gif = tmp_path / "grid.gif"
    code, _, stderr = cli(capsys, "data", "preview", dataset, "-o", gif, "--per-class", "2")
    assert code == 0, stderr
    from lfdm_cli.io import read_video

    grid = read_video(gif)
    assert grid.shape[0] == 7                         # the longest video's length
    code, _, _ = cli(capsys, "data", "preview", dataset, "-o", tmp_path / "grid.png", "--per-class", "1")
    assert code == 0 and (tmp_path / "grid.png").stat().st_size > 0
    code, stdout, _ = cli(capsys, "data", "info", dataset)
    assert code == 0 and "4 videos, 2 classes, 2 subjects" in stdout

    # The real command line: exit code 2 and a message, no traceback.

    res = lfdm("data", "info", tmp_path)
    assert res.returncode == 2 and "not an lfdm dataset" in res.stderr and "Traceback" not in res.stderr
