"""The benchmark scripts run and print what they promise (speed numbers themselves are not tested)."""

import json
import subprocess
import sys
from pathlib import Path

from model_factory import build_tiny_model_folder, write_test_image

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_bench_prints_machine_method_and_table(tmp_path):
    out = tmp_path / "results" / "cpu.md"
    proc = run(ROOT / "benchmarks" / "bench.py", "--only", "data", "--repeats", "1", "--warmup", "0",
               "--output", out)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "- Machine:" in text and "torch threads" in text and "median of 1 timed runs" in text
    rows = [line for line in text.splitlines() if line.startswith("| preprocess") or line.startswith("| SynthFaces")]
    assert len(rows) == 2 and all("frames/s" in r for r in rows)
    assert out.read_text() == text


def test_chain_drift_runs_every_strategy(tmp_path):
    model = build_tiny_model_folder(tmp_path / "tiny")
    image = write_test_image(tmp_path / "face.png")
    proc = run(ROOT / "benchmarks" / "chain_drift.py", model, image, "--segments", "3", "--steps", "2",
               "--threads", "1", "--json", tmp_path / "drift.json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "drift.json").read_text())
    assert set(data["results"]) == {"reanchor", "naive", "crossfade", "noised"}
    assert all(len(v) == 3 for v in data["results"].values())
    assert "| mean |" in proc.stdout and "| last |" in proc.stdout


def test_fvd_reference_clips_match_the_evaluation_clip_rule(tmp_path):
    import numpy as np

    from lfdm_cli.data.dataset import Dataset
    from lfdm_cli.evaluation.generation import real_clip
    from model_factory import SIZE, run_main

    data = tmp_path / "data"
    assert run_main("synth", "faces", data, "--subjects", "4", "--takes", "1", "--frames", "8", "--size", str(SIZE),
                    "--workers", "1") == 0
    model = build_tiny_model_folder(tmp_path / "tiny")
    out = tmp_path / "clips"
    proc = run(ROOT / "scripts" / "fvd_reference_clips.py", model, data, out, "--videos", "3", "--frames", "6")
    assert proc.returncode == 0, proc.stderr
    ds = Dataset.open(data).split("test")
    real = sorted(out.glob("real/*.npy"))
    assert len(real) == 3 and len(list(out.glob("recon/*.npy"))) == 3
    for path in real:
        clip = np.load(path)
        video = ds.load(ds.get(path.stem))
        assert np.array_equal(clip, real_clip(np.asarray(video), 6, SIZE, "pad"))
        static = np.load(out / "static" / path.name)
        assert static.shape == clip.shape and (static == clip[:1]).all()
        assert json.loads((out / "recon" / (path.stem + ".json")).read_text())["class"] == ds.get(path.stem).class_name
    # Bad input: a clear message and exit code 2, nothing (re)written.
    again = run(ROOT / "scripts" / "fvd_reference_clips.py", model, data, out)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    missing = run(ROOT / "scripts" / "fvd_reference_clips.py", tmp_path / "nope", data, tmp_path / "other")
    assert missing.returncode == 2 and "nope" in missing.stderr and not (tmp_path / "other").exists()


def test_bundle_model_packages_a_folder_and_rejects_bad_input(tmp_path):
    from lfdm_cli.modelfolder import load_model_folder

    model = build_tiny_model_folder(tmp_path / "tiny")
    image = write_test_image(tmp_path / "face.png")
    out = tmp_path / "bundled"
    proc = run(ROOT / "scripts" / "bundle_model.py", model, out, "--examples", image, "--drop", "dm")
    assert proc.returncode == 0, proc.stderr
    bundled = load_model_folder(out)
    assert "dm" not in bundled.parts and "dm_ema" in bundled.parts
    assert (out / "examples" / "face.png").read_bytes() == image.read_bytes()
    # Bad input: one Error line, exit code 2, nothing written.
    for args, message in ((["--examples", image, "--drop", "nope"], "no part(s) nope"),
                          (["--examples", tmp_path / "missing.png"], "missing.png")):
        bad = run(ROOT / "scripts" / "bundle_model.py", model, tmp_path / "other", *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert not (tmp_path / "other").exists()
