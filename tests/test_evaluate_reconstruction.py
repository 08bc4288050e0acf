"""`lfdm evaluate reconstruction`: clip sampling, reference frame, metrics, settings, CLI.

Metric plumbing is checked with stand-in reconstructors whose errors are known in closed form
(the identity, and "every frame is the reference frame"); the real tiny LFAE checks the batched
path against `LFAE.reconstruct` and the command end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lfdm_cli.data.dataset import (VideoRecord, new_meta, save_video_array, write_classes, write_manifest,
                                   write_meta)
from lfdm_cli.evaluation.reconstruction import clip_indices, evaluate_reconstruction, lfae_reconstructor
from lfdm_cli.evaluation.selection import select_videos
from lfdm_cli.lfae.model import load_lfae
from lfdm_cli.modelfolder import load_model_folder
from model_factory import CONDITIONS, SIZE, build_tiny_model_folder, run_main


def smooth_video(seed: int, frames: int, size: int = SIZE) -> np.ndarray:
    """A drifting colour pattern: frames differ smoothly, as real video frames do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    fx, fy, speed = rng.uniform(0.1, 0.4, 3)
    out = [0.5 + 0.45 * np.stack([np.sin(fx * x + fy * y + speed * t + c) for c in (0, 2, 4)], -1)
           for t in range(frames)]
    return (np.stack(out) * 255).round().astype(np.uint8)


def write_dataset(root: Path, lengths: list[int], subjects=("s1", "s2")) -> Path:
    """Test-split videos cycling through the tiny model's classes and the given subjects."""
    (root / "videos").mkdir(parents=True)
    records = []
    for i, n in enumerate(lengths):
        vid = f"v{i}"
        save_video_array(root / "videos" / f"{vid}.npy", smooth_video(i, n))
        records.append(VideoRecord(id=vid, split="test", class_name=CONDITIONS[i % len(CONDITIONS)],
                                   subject=subjects[(i // len(CONDITIONS)) % len(subjects)], frames=n,
                                   height=SIZE, width=SIZE, source="test", file=f"videos/{vid}.npy"))
    records.append(VideoRecord(id="train0", split="train", class_name=CONDITIONS[0], subject="s9", frames=8,
                               height=SIZE, width=SIZE, source="test", file="videos/train0.npy"))
    save_video_array(root / "videos" / "train0.npy", smooth_video(99, 8))
    write_classes(root / "classes.txt", CONDITIONS)
    write_manifest(root / "manifest.jsonl", records)
    meta = new_meta(size=SIZE, fit="pad", importer="test", source="test")
    meta["complete"] = True
    write_meta(root, meta)
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    model = build_tiny_model_folder(root / "model")
    data = write_dataset(root / "data", [12, 7, 12, 20])  # v1 is shorter than the 8-frame clips below
    return model, data


def test_clip_indices_follow_linspace_and_keep_short_videos_whole():
    assert clip_indices(12, 4).tolist() == [0, 3, 7, 11]
    assert clip_indices(100, 40).tolist() == np.linspace(0, 99, 40).astype(int).tolist()
    assert clip_indices(5, 40).tolist() == [0, 1, 2, 3, 4]


def test_identity_reconstruction_scores_perfectly(setup):
    model, data = setup
    result = evaluate_reconstruction(model, data, frames=8, progress=False,
                                     reconstructor=lambda source, clip: clip.clone())
    s = result["scores"]
    assert s["l1"] == 0.0 and s["psnr"] == pytest.approx(100.0) and s["ssim"] == pytest.approx(1.0, abs=1e-12)
    # 3 videos give 8 frames, the 7-frame one all 7; the train video is not evaluated.
    assert s["videos"] == 4 and s["frames"] == 3 * 8 + 7
    assert result["settings"]["short_videos"] == [{"id": "v1", "frames": 7}]
    assert any("fewer than 8 frames" in w for w in result["warnings"])


def test_static_prediction_error_is_computed_from_the_clip_and_its_first_frame(setup):
    """Predicting the reference frame everywhere gives L1 = mean |clip - clip[0]|: this pins
    the clip's frames (linspace), the reference (frame 0) and the averaging over all frames."""
    model, data = setup
    result = evaluate_reconstruction(model, data, frames=8, progress=False,
                                     reconstructor=lambda source, clip: source.expand_as(clip).clone())
    errors, per_video = [], {}
    for i, n in enumerate([12, 7, 12, 20]):
        video = np.load(data / "videos" / f"v{i}.npy").astype(np.float64) / 255
        clip = video[np.linspace(0, n - 1, 8).astype(int)] if n >= 8 else video
        frame_errors = np.abs(clip - clip[:1]).mean(axis=(1, 2, 3))
        errors.append(frame_errors)
        per_video[f"v{i}"] = frame_errors.mean()
    flat = np.concatenate(errors)
    assert result["scores"]["l1"] == pytest.approx(flat.mean(), rel=1e-6)
    assert result["scores"]["l1_authors_script"] == pytest.approx(flat.sum() / 4, rel=1e-6)
    assert {v["id"]: v["l1"] for v in result["per_video"]} == pytest.approx(per_video, rel=1e-6)
    # Frame 0 is rebuilt from itself: that frame alone is perfect, the others are not.
    assert 0 < result["scores"]["ssim"] < 1 and result["scores"]["psnr"] < 100


def test_batched_lfae_path_matches_frame_by_frame_reconstruct(setup):
    model, _ = setup
    lfae = load_lfae(load_model_folder(model))
    clip = torch.from_numpy(smooth_video(5, 5)).permute(0, 3, 1, 2).float() / 255
    batched = lfae_reconstructor(lfae, batch_size=2)(clip[:1], clip)
    with torch.inference_mode():
        single = torch.cat([lfae.reconstruct(clip[:1], clip[i:i + 1])["prediction"] for i in range(5)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_selection_is_a_fixed_shuffle_that_larger_counts_extend(setup):
    from lfdm_cli.data.dataset import Dataset

    ds = Dataset.open(setup[1]).split("test")
    two, four = select_videos(ds, 2), select_videos(ds, 4)
    assert [r.id for r in four[:2]] == [r.id for r in two]
    assert sorted(r.id for r in four) == ["v0", "v1", "v2", "v3"]
    assert select_videos(ds, 10) == four


def test_cli_json_table_and_settings(setup, capsys, tmp_path):
    model, data = setup
    out_file = tmp_path / "recon.json"
    code = run_main("evaluate", "reconstruction", "--model", model, "--data", data, "--frames", 6, "--videos", 2,
                    "--batch-size", 4, "--device", "cpu", "--json", "-o", out_file)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert json.loads(out_file.read_text()) == result
    s, st = result["scores"], result["settings"]
    assert s["videos"] == 2 and st["videos"] == 2 and st["frames"] == 6 and st["data"]["split"] == "test"
    assert all(np.isfinite(s[k]) for k in ("l1", "psnr", "ssim"))
    assert 0 < s["l1"] < 1 and s["psnr"] > 0 and -1 <= s["ssim"] <= 1
    assert st["model"]["digest"] == load_model_folder(model).digest()
    assert len(st["video_ids"]) == 2 and len(result["per_video"]) == 2

    code = run_main("evaluate", "reconstruction", "--model", model, "--data", data, "--frames", 6, "--videos", 2,
                    "--device", "cpu")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| L1 ↓ | PSNR ↑ | SSIM ↑ |" in captured.out
    assert f"{s['l1']:.4f}" in captured.out  # the same numbers as the JSON run (batch size 16 vs 4)


def test_cli_bad_inputs_exit_2(setup, capsys, tmp_path):
    model, data = setup
    assert run_main("evaluate", "reconstruction", "--model", model, "--data", tmp_path / "nope") == 2
    assert "not found" in capsys.readouterr().err
    assert run_main("evaluate", "reconstruction", "--model", model, "--data", data, "--split", "val") == 2
    assert "split" in capsys.readouterr().err
    assert run_main("evaluate", "reconstruction", "--model", tmp_path, "--data", data) == 2
    assert "model folder" in capsys.readouterr().err
