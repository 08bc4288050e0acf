"""SynthFaces: deterministic, identities differ, expressions differ in their dynamics, and the
output is an ordinary dataset split by subject."""

import hashlib

import numpy as np
import pytest

from lfdm_cli.data import synthfaces as sf
from lfdm_cli.data.dataset import Dataset
from lfdm_cli.data.importers.common import run_import


def _apex_change(class_name, subjects=range(4), frames=16, size=48):
    """Mean over videos of the largest mean |frame - first frame| (0..255) within the video."""
    changes = []
    for s in subjects:
        v = sf.render_video(5, s, class_name, 0, frames=frames, size=size).astype(np.int16)
        changes.append(np.abs(v - v[:1]).mean(axis=(1, 2, 3)).max())
    return float(np.mean(changes))


def test_deterministic():
    a = sf.render_video(0, 3, "happiness", 1, frames=8, size=32)
    b = sf.render_video(0, 3, "happiness", 1, frames=8, size=32)
    assert a.dtype == np.uint8 and a.shape == (8, 32, 32, 3)
    assert a.tobytes() == b.tobytes()
    assert sf.render_video(1, 3, "happiness", 1, frames=8, size=32).tobytes() != a.tobytes()   # seed
    assert sf.render_video(0, 3, "happiness", 0, frames=8, size=32).tobytes() != a.tobytes()   # take
    assert sf.render_video(0, 4, "happiness", 1, frames=8, size=32).tobytes() != a.tobytes()   # subject


def test_identities_vary():
    ids = [sf.identity_for(0, s) for s in range(40)]
    assert len({i.skin for i in ids}) == 40
    assert len({i.hair_style for i in ids}) >= 5 and len({i.bg_kind for i in ids}) >= 5
    assert any(i.glasses for i in ids) and not all(i.glasses for i in ids)
    # A subject looks the same in every video: the first (neutral) frames of two classes are close.
    x = sf.render_video(0, 2, "anger", 0, frames=2, size=32).astype(int)
    y = sf.render_video(0, 2, "surprise", 1, frames=2, size=32).astype(int)
    z = sf.render_video(0, 9, "anger", 0, frames=2, size=32).astype(int)
    assert np.abs(x[0] - y[0]).mean() < np.abs(x[0] - z[0]).mean() / 2


def test_expressions_have_distinct_dynamics():
    change = {c: _apex_change(c) for c in sf.CLASSES}
    # Neutral has blinks and idle head motion only; every expression moves the face more.
    assert change["surprise"] > 1.5 * change["neutral"]
    for cls in sf.CLASSES:
        if cls != "neutral":
            assert change[cls] > 1.2 * change["neutral"], (cls, change)
    # The time course: neutral start, then the expression (envelope rises from 0 to its apex).
    rng = np.random.default_rng(0)
    for cls in sf.CLASSES:
        perf = sf.sample_performance(rng, cls, 32)
        assert perf.envelope[0] < 0.05 and 0.6 <= perf.envelope.max() <= 1.0
        if cls != "neutral":
            apex = perf.controls[int(np.argmax(perf.envelope))]
            for name, value in sf.APEX[cls].items():
                if abs(value) >= 0.5:
                    assert np.sign(apex[sf.CONTROLS.index(name)]) == np.sign(value), (cls, name)
    # Classes are told apart by different controls at their apex.
    vectors = {c: np.array([sf.APEX[c].get(n, 0.0) for n in sf.CONTROLS]) for c in sf.CLASSES}
    for a in sf.CLASSES:
        for b in sf.CLASSES:
            if a < b:
                assert np.abs(vectors[a] - vectors[b]).sum() > 1.0, (a, b)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown SynthFaces class"):
        sf.render_video(0, 0, "contempt", 0)


def _digest(path):
    ds = Dataset.open(path)
    return {v.id: hashlib.sha256(np.asarray(ds.load(v)).tobytes()).hexdigest() for v in ds.videos}


def test_dataset_split_and_reproducible(tmp_path):
    plan = sf.plan_synthfaces(subjects=4, takes=1, frames=4, size=32, seed=7, test_fraction=0.25)
    run_import(plan, tmp_path / "a", size=32, workers=1, progress=False)
    ds = Dataset.open(tmp_path / "a")
    assert ds.classes == list(sf.CLASSES) and len(ds) == 28 and ds.meta["importer"] == "synthfaces"
    test_subjects = {v.subject for v in ds.split("test")}
    train_subjects = {v.subject for v in ds.split("train")}
    assert len(test_subjects) == 1 and not test_subjects & train_subjects
    assert ds.get("s01_surprise_t0").class_name == "surprise"
    assert ds.load("s01_surprise_t0").shape == (4, 32, 32, 3)
    # Same arguments, another folder: byte-identical arrays.
    run_import(sf.plan_synthfaces(subjects=4, takes=1, frames=4, size=32, seed=7, test_fraction=0.25),
               tmp_path / "b", size=32, workers=1, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_cli(tmp_path, lfdm):
    res = lfdm("synth", "faces", tmp_path / "sf", "--subjects", "2", "--takes", "1", "--frames", "3",
               "--size", "16", "--workers", "1", "--json", "-q")
    assert res.returncode == 0, res.stderr
    import json

    summary = json.loads(res.stdout)
    assert summary["videos"] == 14 and summary["splits"] == {"test": 7, "train": 7}
    direct = sf.render_video(0, 1, "fear", 0, frames=3, size=16)
    assert np.array_equal(Dataset.open(tmp_path / "sf").load("s01_fear_t0"), direct)
