"""`lfdm demo`: every condition of a model animates its bundled example image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lfdm_cli.io import probe_video, read_video
from model_factory import build_tiny_model_folder, write_test_image

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "weights" / "synthfaces64"


def _check_demo(out_dir: Path, conditions: list[str], frames: int, size: int, stdout: str) -> None:
    printed = stdout.split()
    assert str(out_dir / "all_conditions.gif") in printed
    for condition in conditions:
        videos = sorted(out_dir.glob(f"*_{condition}.mp4"))
        assert len(videos) == 1, condition
        info = probe_video(videos[0])
        assert info["frames"] == frames and (info["width"], info["height"]) == (size, size)
        sidecar = json.loads(videos[0].with_suffix(".json").read_text())
        assert sidecar["condition"] == condition and sidecar["frames"] == frames
        frames_rgb = read_video(videos[0])
        # A real video: not blank, and the frames are not all identical (the model moved something).
        assert frames_rgb.std() > 5
    grid = read_video(out_dir / "all_conditions.gif")
    assert grid.shape[0] == frames and grid.shape[2] >= size * len(conditions)


def test_demo_on_a_tiny_model(tmp_path, lfdm):
    model = build_tiny_model_folder(tmp_path / "model")
    (model / "examples").mkdir()
    write_test_image(model / "examples" / "face.png")
    out_dir = tmp_path / "demo"
    res = lfdm("demo", "--model", model, "--out-dir", out_dir, "--device", "cpu", "-q")
    assert res.returncode == 0, res.stderr
    from lfdm_cli.pipeline import GenerationPipeline

    pipe = GenerationPipeline.from_folder(model)
    _check_demo(out_dir, pipe.conditions, pipe.default_frames, pipe.resolution, res.stdout)


def test_demo_without_examples_is_a_clear_error(tmp_path, lfdm):
    model = build_tiny_model_folder(tmp_path / "model")
    res = lfdm("demo", "--model", model, "--out-dir", tmp_path / "demo", "--device", "cpu")
    assert res.returncode == 2 and "no example images" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(not (BUNDLED / "model.yaml").is_file(), reason="the bundled model is not in this checkout")
def test_demo_on_the_bundled_model(tmp_path, lfdm):
    res = lfdm("demo", "--device", "cpu", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    from lfdm_cli.pipeline import GenerationPipeline

    pipe = GenerationPipeline.from_folder(BUNDLED)
    _check_demo(tmp_path / "lfdm-demo", pipe.conditions, pipe.default_frames, pipe.resolution, res.stdout)
