"""`lfdm generate` end to end on a tiny random model: outputs, sidecars, determinism, batch jobs."""

import json
import os

import numpy as np
import pytest

from lfdm_cli.io import fit_frames, load_image, probe_video, read_video
from model_factory import CONDITIONS, FRAMES, SIZE, build_tiny_model_folder, run_main, write_test_image

STEPS = ("--steps", "3")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return write_test_image(tmp_path_factory.mktemp("images") / "face.png")


def gen(model, *args):
    return run_main("generate", *args, "--model", model, "--device", "cpu", "--quiet", *STEPS)


def test_single_mp4_with_sidecar(model, image, tmp_path, capsys):
    out = tmp_path / "happy.mp4"
    assert gen(model, image, "-c", "happiness", "-o", out, "--seed", "7") == 0
    assert capsys.readouterr().out.strip() == str(out)
    info = probe_video(out)
    assert info["frames"] == FRAMES and (info["width"], info["height"]) == (SIZE, SIZE)
    meta = json.loads((tmp_path / "happy.json").read_text())
    assert meta["condition"] == "happiness" and meta["seed"] == 7
    assert (meta["sampler"], meta["steps"], meta["eta"], meta["guidance"]) == ("ddim", 3, 0.0, 1.0)
    assert meta["frames"] == FRAMES and meta["fps"] == 8.0 and meta["fit"] == "pad"
    assert meta["model"]["path"] == str(model.resolve()) and len(meta["model"]["digest"]) == 16
    assert meta["device"] == "cpu" and meta["lfdm_version"] and meta["source_image"] == str(image.resolve())
    assert {"encode_s", "sample_s", "decode_s", "total_s", "load_model_s", "write_s"} <= set(meta["timings"])
    assert "model's own frame 0" in meta["frame0"]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_gif_and_png_folder_outputs(model, image, tmp_path):
    assert gen(model, image, "-c", "sadness", "-o", tmp_path / "sad.gif", "--fps", "5") == 0
    assert read_video(tmp_path / "sad.gif").shape == (FRAMES, SIZE, SIZE, 3)
    assert json.loads((tmp_path / "sad.json").read_text())["fps"] == 5.0
    assert gen(model, image, "-c", "sadness", "-o", f"{tmp_path / 'frames'}/") == 0
    assert sorted(p.name for p in (tmp_path / "frames").iterdir())[0] == "frame_0000.png"
    assert read_video(tmp_path / "frames").shape == (FRAMES, SIZE, SIZE, 3)
    assert json.loads((tmp_path / "frames.json").read_text())["output"].endswith("frames")


def test_save_flow_writes_the_side_by_side_video(model, image, tmp_path):
    assert gen(model, image, "-c", "surprise", "-o", tmp_path / "s.mp4", "--save-flow") == 0
    panel = read_video(tmp_path / "s_flow.mp4")
    assert panel.shape[0] == FRAMES
    assert panel.shape[2] >= 5 * SIZE and panel.shape[1] >= SIZE  # five tiles in a row, captions below
    assert json.loads((tmp_path / "s.json").read_text())["flow_output"].endswith("s_flow.mp4")


def test_keep_input_frame_puts_the_fitted_input_first(model, image, tmp_path):
    assert gen(model, image, "-c", "happiness", "-o", tmp_path / "k", "--keep-input-frame", "--fit", "crop") == 0
    frames = read_video(tmp_path / "k")
    assert frames.shape[0] == FRAMES + 1
    assert np.array_equal(frames[0], fit_frames(load_image(image), SIZE, "crop"))
    meta = json.loads((tmp_path / "k.json").read_text())
    assert meta["frames_written"] == FRAMES + 1 and meta["fit"] == "crop"


def test_same_seed_identical_frames_other_seed_different(model, image, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert gen(model, image, "-c", "happiness", "-o", tmp_path / name, "--seed", seed) == 0
    a, b, c = (read_video(tmp_path / n) for n in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_num_samples_one_batch_equal_to_single_runs(model, image, tmp_path, capsys):
    assert gen(model, image, "-c", "surprise", "--num", "3", "--seed", "10", "-o", tmp_path / "n") == 0
    names = capsys.readouterr().out.split()
    assert names == [str(tmp_path / f"n-{s}") for s in (10, 11, 12)]
    for seed in (10, 11, 12):
        meta = json.loads((tmp_path / f"n-{seed}.json").read_text())
        assert meta["seed"] == seed and meta["timings"]["batch_size"] == 3
    assert gen(model, image, "-c", "surprise", "--seed", "11", "-o", tmp_path / "single") == 0
    batched, single = read_video(tmp_path / "n-11").astype(int), read_video(tmp_path / "single").astype(int)
    # Same noise; the batch only changes float rounding, so at most one grey level on a few pixels.
    assert np.abs(batched - single).max() <= 1 and (batched != single).mean() < 0.01


def test_existing_output_is_refused_unless_overwrite(model, image, tmp_path, capsys):
    out = tmp_path / "x.mp4"
    out.write_bytes(b"keep me")
    assert gen(model, image, "-c", "happiness", "-o", out) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert gen(model, image, "-c", "happiness", "-o", out, "--overwrite") == 0
    assert probe_video(out)["frames"] == FRAMES


def test_bad_inputs_exit_2(model, image, tmp_path, capsys):
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(image.read_bytes()[:300])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cases = [
        ((tmp_path / "missing.png", "-c", "happiness"), "not found"),
        ((text, "-c", "happiness"), "not an image"),
        ((truncated, "-c", "happiness"), "truncated"),
        ((image, "-c", "happines"), "Did you mean 'happiness'"),
        ((image,), "--condition is required"),
        ((image, "-c", "happiness", "-o", tmp_path / "x.avi"), "unknown suffix"),
        ((image, "-c", "happiness", "--fit", "zoom"), "fit"),
    ]
    for args, message in cases:
        extra = () if "-o" in args else ("-o", tmp_path / "o.mp4")
        assert gen(model, *args, *extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_unknown_condition_in_a_subprocess(lfdm, model, image, tmp_path):
    result = lfdm("generate", image, "-c", "angry", "--model", model, "-o", tmp_path / "a.mp4")
    assert result.returncode == 2
    assert "Unknown condition 'angry'" in result.stderr and "Traceback" not in result.stderr
    assert all(c in result.stderr for c in CONDITIONS)


# ---------------------------------------------------------------------------------------------
# Manifests


def write_csv(path, rows):
    path.write_text("image,condition,seed,steps,output\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_manifest_with_a_bad_row_resumes_and_never_redoes_work(model, image, tmp_path, capsys):
    os.link(image, tmp_path / "face.png")
    manifest = write_csv(tmp_path / "jobs.csv", [
        ("face.png", "happiness", 1, 3, "a"),
        ("face.png", "sadness", 2, 3, "b.gif"),
        ("missing.png", "happiness", 3, 3, "c"),
        ("face.png", "surprise", 4, 2, ""),
        ("face.png", "anger", 5, 3, "e"),
    ])
    out = tmp_path / "videos"
    args = ("--manifest", manifest, "--out-dir", out, "--json", "--batch-size", "2")
    assert gen(model, *args) == 2
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    status = {r["row"]: r["status"] for r in lines}
    assert status == {1: "done", 2: "done", 3: "failed", 4: "done", 5: "failed"}
    errors = {r["row"]: r["error"] for r in lines if r["error"]}
    assert "missing.png" in errors[3] and "Unknown condition 'anger'" in errors[5]
    made = {p.name for p in out.iterdir()}
    assert {"a.mp4", "a.json", "b.gif", "b.json", "face_surprise_s4.mp4", "face_surprise_s4.json"} == made
    a_meta = json.loads((out / "a.json").read_text())
    assert a_meta["manifest_row"] == 1 and a_meta["timings"]["batch_size"] == 2  # rows 1 and 2 shared a batch
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}

    # Re-running does nothing twice: finished rows are skipped, the bad rows fail again.
    assert gen(model, *args) == 2
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sorted(r["status"] for r in lines) == ["failed", "failed", "skipped", "skipped", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    # A row whose sidecar is missing (killed between video and sidecar) is the only one redone.
    (out / "b.json").unlink()
    assert gen(model, *args) == 2
    lines = {r["row"]: r["status"] for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert lines[2] == "done" and lines[1] == lines[4] == "skipped"

    # Fixed manifest: everything finishes, exit 0.
    write_csv(manifest, [("face.png", "happiness", 1, 3, "a"), ("face.png", "sadness", 2, 3, "b.gif"),
                         ("face.png", "surprise", 4, 2, "")])
    assert gen(model, *args) == 0
    assert [json.loads(x)["status"] for x in capsys.readouterr().out.splitlines()] == ["skipped"] * 3


def test_manifest_row_with_other_settings_needs_overwrite(model, image, tmp_path, capsys):
    manifest = write_csv(tmp_path / "jobs.csv", [(image, "happiness", 1, 3, "a")])
    out = tmp_path / "v"
    assert gen(model, "--manifest", manifest, "--out-dir", out) == 0
    write_csv(manifest, [(image, "happiness", 2, 3, "a")])  # new seed, same output name
    assert gen(model, "--manifest", manifest, "--out-dir", out) == 2
    assert "made with other settings" in capsys.readouterr().err
    assert gen(model, "--manifest", manifest, "--out-dir", out, "--overwrite") == 0
    assert json.loads((out / "a.json").read_text())["seed"] == 2


def test_jsonl_manifest_summary_and_per_row_settings(model, image, tmp_path, capsys):
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"image": str(image), "condition": "happiness", "seed": 1, "frames": 4, "output": "x"}),
        "{not json",
        json.dumps({"image": str(image), "condition": "sadness", "sampler": "dpmpp", "steps": 2, "guidance": 1.5}),
    ]) + "\n")
    out = tmp_path / "v"
    assert run_main("generate", "--manifest", manifest, "--out-dir", out, "--model", model, "--format", "gif",
                    "--device", "cpu", *STEPS) == 2
    err = capsys.readouterr().err
    assert "done" in err and "skipped" in err and "failed" in err and "not valid JSON" in err
    x = json.loads((out / "x.json").read_text())
    assert x["frames"] == 4 and read_video(out / "x.gif").shape[0] == 4
    other = json.loads((out / "face_sadness_s0.json").read_text())
    assert (other["sampler"], other["steps"], other["guidance"]) == ("dpmpp", 2, 1.5)


def test_manifest_usage_errors(model, image, tmp_path, capsys):
    bad = tmp_path / "jobs.csv"
    bad.write_text("image,conditon\nface.png,happiness\n")
    assert gen(model, "--manifest", bad, "--out-dir", tmp_path / "o") == 2
    assert "Did you mean 'condition'" in capsys.readouterr().err
    assert gen(model, image, "--manifest", bad, "--out-dir", tmp_path / "o") == 2
    assert gen(model, "--manifest", bad) == 2
    assert "--out-dir" in capsys.readouterr().err
