"""Stage-two training: the tiny-recipe run, exact resume, the flow cache, the final model folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

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
from lfdm_cli.lfae.model import lfae_meta
from lfdm_cli.modelfolder import load_model_folder, save_model_folder
from lfdm_cli.training.clips import ClipDataset
from lfdm_cli.training.dm_trainer import train_dm
from lfdm_cli.training.flow_cache import FlowCache, lfae_digest, video_targets
from model_factory import SIZE, build_tiny_models

CLASSES = ["happiness", "sadness", "surprise"]
FRAMES = 6   # the tiny recipe's clip length


def make_dataset(path: Path, lengths=(8, 12, 9, 8, 10, 8)) -> Path:
    """SynthFaces videos at 32x32 of different lengths, all training videos, three classes."""
    from lfdm_cli.data.synthfaces import render_video

    path.mkdir(parents=True)
    (path / VIDEOS_DIR).mkdir()
    records = []
    for i, frames in enumerate(lengths):
        cls = CLASSES[i % len(CLASSES)]
        vid = f"s{i // len(CLASSES)}_{cls}"
        save_video_array(path / VIDEOS_DIR / f"{vid}.npy",
                         render_video(0, i // len(CLASSES), cls, 0, frames=frames, size=SIZE))
        records.append(VideoRecord(id=vid, split="train", class_name=cls, subject=f"s{i // len(CLASSES)}",
                                   frames=frames, height=SIZE, width=SIZE, source="synthfaces",
                                   file=f"{VIDEOS_DIR}/{vid}.npy"))
    write_classes(path / CLASSES_FILE, CLASSES)
    write_manifest(path / MANIFEST_FILE, records)
    meta = new_meta(size=SIZE, fit="pad", importer="test", source="synthfaces", fps=8.0)
    meta["complete"] = True
    write_meta(path, meta)
    return path


def make_lfae(path: Path, seed: int = 0) -> Path:
    lfae, _, config = build_tiny_models(seed)
    return save_model_folder(path, lfae_meta(config, SIZE), {"lfae": lfae.state_dict()})


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm_assets")
    return make_dataset(root / "data"), make_lfae(root / "lfae")


@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory):
    data, lfae = assets
    out = tmp_path_factory.mktemp("dm_run") / "run"
    torch.set_num_threads(1)
    result = train_dm("tiny", data, lfae, out, device="cpu", max_steps=36, show_progress=False)
    return out, result


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- training

def test_tiny_run_lowers_the_loss(trained):
    run, result = trained
    assert result.step == 36
    losses = [r["diffusion"] for r in _log(run)]
    assert len(losses) == 36 and all(np.isfinite(losses))
    first, last = np.mean(losses[:6]), np.mean(losses[-6:])
    assert last < 0.85 * first, (first, last)
    record = json.loads((run / "run.json").read_text())
    assert record["task"] == "dm"
    assert record["metadata"]["conditions"] == CLASSES
    # colour jitter is on in the tiny recipe, so cached targets are the unjittered frames'
    assert record["metadata"]["flow_targets"] == "cached_unjittered"
    assert sorted(p.name for p in (run / "previews").glob("*.gif"))[:2] == ["step_0000005.gif", "step_0000010.gif"]


def test_model_folder_is_complete_and_samples_valid_flows(trained, assets):
    from lfdm_cli.pipeline import GenerationPipeline

    run, _ = trained
    data, lfae_dir = assets
    folder = load_model_folder(run / "model")
    assert set(folder.parts) == {"lfae", "dm", "dm_ema"}
    assert folder.meta["resolution"] == SIZE and folder.meta["fps"] == 8.0 and folder.meta["fit"] == "pad"
    assert folder.meta["dm"]["conditions"] == CLASSES and folder.meta["dm"]["num_frames"] == FRAMES
    assert folder.meta["provenance"]["steps"] == 36
    # stage one is copied in unchanged; the average differs from the raw weights
    src = load_file(str(lfae_dir / "lfae.safetensors"))
    copied = folder.load_tensors("lfae")
    assert all(torch.equal(src[k], copied[k]) for k in src)
    raw, ema = folder.load_tensors("dm"), folder.load_tensors("dm_ema")
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    # the raw weights are the last checkpoint's
    ckpt = load_file(str(run / "checkpoints" / "step_0000036" / "model.safetensors"))
    assert all(torch.equal(ckpt[k], raw[k]) for k in raw)

    pipe = GenerationPipeline.from_folder(run / "model")
    image = torch.from_numpy(np.array(Dataset.open(data).load("s0_sadness")[0])).permute(2, 0, 1)[None].float() / 255
    result = pipe.generate(image.repeat(2, 1, 1, 1), ["sadness", "None"], steps=5, seeds=[0, 1])
    h = pipe.lfae.flow_size
    assert result.flows.shape == (2, FRAMES, h, h, 2)
    assert result.occlusions.shape == (2, FRAMES, 1, h, h)
    assert result.videos.shape == (2, FRAMES, 3, SIZE, SIZE)
    assert result.flows.abs().max() <= 1.0 and result.flows.std() > 0
    assert result.occlusions.min() >= 0.0 and result.occlusions.max() <= 1.0


def test_resume_is_exact_and_works_from_the_cli(assets, tmp_path, lfdm):
    data, lfae = assets
    straight = tmp_path / "straight"
    train_dm("tiny", data, lfae, straight, device="cpu", max_steps=6, flow_cache=False, show_progress=False)
    split = tmp_path / "split"
    common = ["train", "dm", "--recipe", "tiny", "--data", data, "--lfae", lfae, "--out", split,
              "--device", "cpu", "--no-flow-cache", "--quiet"]
    first = lfdm(*common, "--max-steps", "3")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(split / "model")
    second = lfdm(*common, "--max-steps", "6", "--resume", "--json")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["steps"] == 6 and summary["flow_targets"] == "exact"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(str(straight / "checkpoints" / "step_0000006" / name))
        b = load_file(str(split / "checkpoints" / "step_0000006" / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["loss"] for r in _log(straight)] == [r["loss"] for r in _log(split)]


def test_resume_refuses_other_targets_or_stage_one(assets, tmp_path):
    data, lfae = assets
    run = tmp_path / "run"
    train_dm("tiny", data, lfae, run, device="cpu", max_steps=1, show_progress=False)
    with pytest.raises(UserError, match="flow_targets"):
        train_dm("tiny", data, lfae, run, device="cpu", max_steps=2, resume=True, flow_cache=False,
                 show_progress=False)
    other = make_lfae(tmp_path / "other_lfae", seed=1)
    with pytest.raises(UserError, match="lfae_digest"):
        train_dm("tiny", data, other, run, device="cpu", max_steps=2, resume=True, show_progress=False)
    assert len(list((run / "flow_cache").iterdir())) == 1   # refused before building a cache for it


def test_bad_inputs_are_user_errors(assets, tmp_path, lfdm):
    data, lfae = assets
    proc = lfdm("train", "dm", "--recipe", "mug128", "--data", data, "--lfae", lfae, "--out", tmp_path / "r")
    assert proc.returncode == 2
    assert "trains at 128x128" in proc.stderr and "Traceback" not in proc.stderr
    proc = lfdm("train", "dm", "--recipe", "tiny", "--data", data, "--lfae", data, "--out", tmp_path / "r")
    assert proc.returncode == 2 and "not an lfdm model folder" in proc.stderr


# ----------------------------------------------------------------------------- flow cache

@pytest.mark.parametrize("mode", ["uniform", "random", "very_random"])
def test_flow_cache_gives_the_targets_computed_from_the_clip(assets, tmp_path, mode):
    data_dir, lfae_dir = assets
    folder = load_model_folder(lfae_dir)
    from lfdm_cli.lfae.model import load_lfae

    lfae = load_lfae(folder)
    data = Dataset.open(data_dir).split("train")
    clips = ClipDataset(data, FRAMES, mode, color_jitter=False)
    cache = FlowCache(tmp_path / "cache", lfae_digest(folder))
    computed = cache.build(lfae, data, clips.frames_used, torch.device("cpu"), show_progress=False)
    assert computed == sum(len(clips.frames_used(v)) for v in data.videos)
    assert cache.build(lfae, data, clips.frames_used, torch.device("cpu"), show_progress=False) == 0

    cached = ClipDataset(data, FRAMES, mode, color_jitter=False)
    cached.targets = cache
    for index in range(len(data.videos)):
        for seed in range(3):
            item = cached.get(index, np.random.default_rng(seed))
            plain = clips.get(index, np.random.default_rng(seed))
            assert np.array_equal(item["indices"], plain["indices"])
            frames = torch.from_numpy(plain["frames"])[None]
            with torch.no_grad():
                flow, occ = lfae.flow_and_occlusion(frames[:, 0], frames)
            assert item["flow"].shape == (FRAMES, 8, 8, 2) and item["occlusion"].shape == (FRAMES, 1, 8, 8)
            np.testing.assert_allclose(item["flow"], flow[0].numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(item["occlusion"], occ[0].numpy(), rtol=0, atol=1e-5)


def test_flow_cache_is_invalidated_by_another_stage_one_or_changed_frames(assets, tmp_path):
    data_dir, lfae_dir = assets
    from lfdm_cli.lfae.model import load_lfae

    data_copy = tmp_path / "data"
    shutil.copytree(data_dir, data_copy)
    data = Dataset.open(data_copy).split("train")
    first = load_model_folder(lfae_dir)
    second = load_model_folder(make_lfae(tmp_path / "lfae2", seed=1))
    assert lfae_digest(first) != lfae_digest(second)
    # the same weights saved again give the same digest (safetensors headers are not byte-stable)
    assert lfae_digest(first) == lfae_digest(load_model_folder(make_lfae(tmp_path / "lfae_again", seed=0)))
    clips = ClipDataset(data, FRAMES, "uniform", color_jitter=False)
    cpu = torch.device("cpu")

    a = FlowCache(tmp_path / "cache", lfae_digest(first))
    a.build(load_lfae(first), data, clips.frames_used, cpu, show_progress=False)
    b = FlowCache(tmp_path / "cache", lfae_digest(second))
    assert b.folder != a.folder
    assert b.build(load_lfae(second), data, clips.frames_used, cpu, show_progress=False) > 0
    record = data.videos[0]
    idx = clips.get(0, np.random.default_rng(0))["indices"]
    assert not np.allclose(a.lookup(record, idx)[0], b.lookup(record, idx)[0])

    # A file written for another model under this model's name is recomputed, not trusted.
    shutil.copy(b.path(record), a.path(record))
    assert a.ensure(load_lfae(first), data, record, clips.frames_used(record), cpu) == FRAMES
    # So is a video whose frames changed since.
    video = data.load(record, mmap=False)
    save_video_array(data_copy / record.file, 255 - video)
    assert a.ensure(load_lfae(first), data, record, clips.frames_used(record), cpu) == FRAMES
    expected = video_targets(load_lfae(first), 255 - video, clips.frames_used(record), cpu)[0]
    assert torch.equal(torch.from_numpy(a.lookup(record, clips.frames_used(record))[0]), expected)


@pytest.mark.parametrize("stage", ["lfae", "dm"])
def test_interrupt_message_and_exit_code_for_both_stages(stage, monkeypatch, tmp_path):
    """Ctrl-C inside either trainer: the checkpoint is named, the resume command printed, exit 130."""
    import signal

    from typer.testing import CliRunner

    import lfdm_cli.training.dm_trainer as dm_trainer
    import lfdm_cli.training.lfae_trainer as lfae_trainer
    from lfdm_cli.cli.app import app
    from lfdm_cli.training.loop import TrainingInterrupted

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted(signal.SIGINT, tmp_path / "checkpoints" / "step_0000003", 3)

    monkeypatch.setattr(lfae_trainer, "train_lfae", interrupted)
    monkeypatch.setattr(dm_trainer, "train_dm", interrupted)
    args = ["train", stage, "--recipe", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    if stage == "dm":
        args += ["--lfae", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 130, res.output
    assert "step_0000003" in res.output and "--resume" in res.output
