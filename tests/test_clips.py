"""Stage-two clip sampling (uniform / random / very_random as the authors' DM datasets define them)
and the clip colour jitter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfdm_cli.data.dataset import (
    CLASSES_FILE,
    MANIFEST_FILE,
    VIDEOS_DIR,
    Dataset,
    VideoRecord,
    new_meta,
    save_video_array,
    write_classes,
    write_manifest,
    write_meta,
)
from lfdm_cli.errors import UserError
from lfdm_cli.training.clips import (
    JITTER_BRIGHTNESS,
    ClipDataset,
    JitterFactors,
    apply_jitter,
    clip_indices,
    frames_used,
    uniform_indices,
)


class ScriptedRng:
    """Stands in for numpy's Generator: returns scripted values and records the calls."""

    def __init__(self, integers=None, choice=None):
        self._integers = integers
        self._choice = choice
        self.calls = []

    def integers(self, low, high):
        self.calls.append((int(low), int(high)))
        return self._integers(int(low), int(high))

    def choice(self, n, size, replace):
        assert replace is True
        self.calls.append(("choice", n, size))
        return np.asarray(self._choice[:size])


# ----------------------------------------------------------------------------- uniform

def test_uniform_is_floor_of_linspace():
    # linspace(0, 99, 40) = 0, 2.538..., 5.076..., ...: the reference casts to int (floor).
    idx = clip_indices(100, 40, "uniform", np.random.default_rng(0))
    assert idx.dtype == np.int64 and idx.shape == (40,)
    assert idx[:6].tolist() == [0, 2, 5, 7, 10, 12]
    assert idx[-1] == 99
    assert idx.tolist() == [int(np.floor(v)) for v in np.linspace(0, 99, 40)]
    assert clip_indices(10, 4, "uniform", None).tolist() == [0, 3, 6, 9]
    assert clip_indices(40, 40, "uniform", None).tolist() == list(range(40))


def test_short_videos_repeat_their_last_frame():
    assert uniform_indices(5, 8).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    # random does the same for short videos (the reference only jitters when T >= K) and draws nothing
    rng = ScriptedRng(integers=lambda lo, hi: pytest.fail("no draw expected"))
    assert clip_indices(5, 8, "random", rng).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


# ----------------------------------------------------------------------------- random

def test_random_moves_inner_indices_within_their_gaps():
    # T=10, K=4: uniform [0, 3, 6, 9], gaps 3, 3, 3. Inner index i moves by a draw from
    # [1 - gap before, gap after) = [-2, 3): the extremes give [0,1,4,9] and [0,5,8,9].
    low = ScriptedRng(integers=lambda lo, hi: lo)
    assert clip_indices(10, 4, "random", low).tolist() == [0, 1, 4, 9]
    assert low.calls == [(-2, 3), (-2, 3)]
    high = ScriptedRng(integers=lambda lo, hi: hi - 1)
    assert clip_indices(10, 4, "random", high).tolist() == [0, 5, 8, 9]
    # Uneven gaps: T=12, K=5: linspace(0, 11, 5) = 0, 2.75, 5.5, 8.25, 11 -> [0, 2, 5, 8, 11].
    rec = ScriptedRng(integers=lambda lo, hi: 0)
    assert clip_indices(12, 5, "random", rec).tolist() == [0, 2, 5, 8, 11]
    assert rec.calls == [(1 - 2, 3), (1 - 3, 3), (1 - 3, 3)]


def test_random_sorts_after_moving():
    # Inner moves may cross (index 1 moved up, index 2 moved down); the result is sorted.
    draws = iter([2, -2])
    rng = ScriptedRng(integers=lambda lo, hi: next(draws))
    assert clip_indices(10, 4, "random", rng).tolist() == [0, 4, 5, 9]


def test_random_statistics():
    rng = np.random.default_rng(1)
    base = uniform_indices(23, 7)
    seen = set()
    for _ in range(3000):
        idx = clip_indices(23, 7, "random", rng)
        assert idx[0] == 0 and idx[-1] == 22 and (np.diff(idx) >= 0).all()
        seen.update(idx.tolist())
    assert seen == set(frames_used(23, 7, "random").tolist())
    assert set(base.tolist()) <= seen


# ----------------------------------------------------------------------------- very_random

def test_very_random_sorts_draws_and_forces_frame_zero():
    rng = ScriptedRng(choice=[5, 2, 7, 2])
    assert clip_indices(9, 4, "very_random", rng).tolist() == [0, 2, 5, 7]
    assert rng.calls == [("choice", 9, 4)]
    # With replacement: a 3-frame video still gives a 6-frame clip, no padding.
    idx = clip_indices(3, 6, "very_random", np.random.default_rng(0))
    assert idx.shape == (6,) and idx[0] == 0 and idx.max() <= 2 and (np.diff(idx) >= 0).all()


def test_every_mode_starts_at_frame_zero():
    rng = np.random.default_rng(2)
    for mode in ("uniform", "random", "very_random"):
        for total in (3, 6, 40, 97):
            for _ in range(50):
                idx = clip_indices(total, 6, mode, rng)
                assert idx[0] == 0 and idx.max() < total
                assert set(idx.tolist()) <= set(frames_used(total, 6, mode).tolist())


def test_frames_used():
    assert frames_used(10, 4, "uniform").tolist() == [0, 3, 6, 9]
    assert frames_used(5, 8, "uniform").tolist() == [0, 1, 2, 3, 4]
    assert frames_used(10, 4, "random").tolist() == list(range(10))
    assert frames_used(30, 2, "random").tolist() == [0, 29]
    assert frames_used(7, 3, "very_random").tolist() == list(range(7))


def test_unknown_mode_is_a_user_error():
    with pytest.raises(UserError, match="very_random"):
        clip_indices(10, 4, "veryrandom", np.random.default_rng(0))


# ----------------------------------------------------------------------------- colour jitter

def test_jitter_factors_follow_the_reference_ranges_and_order():
    rng = np.random.default_rng(5)
    draws = [JitterFactors.draw(rng) for _ in range(2000)]
    b = np.array([d.brightness for d in draws])
    c = np.array([d.contrast for d in draws])
    s = np.array([d.saturation for d in draws])
    h = np.array([d.hue for d in draws])
    assert b.min() >= 1 - JITTER_BRIGHTNESS and b.max() <= 1 + JITTER_BRIGHTNESS
    assert b.min() < 1 - 0.9 * JITTER_BRIGHTNESS and b.max() > 1 + 0.9 * JITTER_BRIGHTNESS
    assert c.min() >= 0.75 and c.max() <= 1.25 and s.min() >= 0.75 and s.max() <= 1.25
    assert h.min() >= -0.04 and h.max() <= 0.04 and h.min() < -0.035
    # Order of draws: brightness, contrast, saturation, hue.
    ref = np.random.default_rng(9)
    expected = [ref.uniform(1 - 64 / 255, 1 + 64 / 255), ref.uniform(0.75, 1.25), ref.uniform(0.75, 1.25),
                ref.uniform(-0.04, 0.04)]
    assert JitterFactors.draw(np.random.default_rng(9)).as_array() == pytest.approx(expected)


def test_apply_jitter():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    clip = np.stack([frame, frame, 255 - frame])
    # Unit factors change nothing but the HSV round trip that the hue step always makes (as
    # torchvision's adjust_hue does, even for a zero shift).
    ident = apply_jitter(clip, JitterFactors(1.0, 1.0, 1.0, 0.0))
    round_trip = np.stack([np.asarray(Image.fromarray(f).convert("HSV").convert("RGB")) for f in clip])
    assert np.array_equal(ident, round_trip)
    out = apply_jitter(clip, JitterFactors(1.2, 0.9, 1.1, 0.03))
    assert out.dtype == np.uint8 and out.shape == clip.shape
    assert np.array_equal(out[0], out[1])          # one set of factors for every frame
    assert not np.array_equal(out[0], clip[0])
    grey = np.full((1, 4, 4, 3), 100, np.uint8)
    assert apply_jitter(grey, JitterFactors(1.2, 1.0, 1.0, 0.0))[0, 0, 0].tolist() == [120, 120, 120]


# ----------------------------------------------------------------------------- the dataset

def _dataset(path: Path, lengths=(9, 4), size=16) -> Dataset:
    path.mkdir(parents=True)
    (path / VIDEOS_DIR).mkdir()
    records = []
    rng = np.random.default_rng(0)
    for i, frames in enumerate(lengths):
        vid = f"v{i}"
        save_video_array(path / VIDEOS_DIR / f"{vid}.npy", rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8))
        records.append(VideoRecord(id=vid, split="train", class_name=["a", "b"][i % 2], subject=None, frames=frames,
                                   height=size, width=size, source="test", file=f"{VIDEOS_DIR}/{vid}.npy"))
    write_classes(path / CLASSES_FILE, ["a", "b"])
    write_manifest(path / MANIFEST_FILE, records)
    meta = new_meta(size=size, fit="pad", importer="test", source="test")
    meta["complete"] = True
    write_meta(path, meta)
    return Dataset.open(path)


def test_clip_dataset_items(tmp_path):
    data = _dataset(tmp_path / "d")
    clips = ClipDataset(data, 6, "uniform", color_jitter=False)
    assert len(clips) == 2
    item = clips.get(0, np.random.default_rng(0))
    video = data.load(data.videos[0])
    assert item["frames"].shape == (6, 3, 16, 16) and item["frames"].dtype == np.float32
    assert item["indices"].tolist() == [0, 1, 3, 4, 6, 8]
    assert np.array_equal(item["frames"][0], video[0].transpose(2, 0, 1) / np.float32(255))
    assert int(item["label"]) == 0 and int(item["video"]) == 0
    short = clips.get(1, np.random.default_rng(0))
    assert short["indices"].tolist() == [0, 1, 2, 3, 3, 3] and int(short["label"]) == 1
    # Jittered and randomly sampled items are a function of the generator.
    jit = ClipDataset(data, 6, "very_random", color_jitter=True)
    a, b = jit.get(0, np.random.default_rng(3)), jit.get(0, np.random.default_rng(3))
    assert np.array_equal(a["frames"], b["frames"]) and np.array_equal(a["indices"], b["indices"])
    c = jit.get(0, np.random.default_rng(4))
    assert not np.array_equal(a["frames"], c["frames"])
