"""Stage-one training: transforms, losses, the tiny-recipe run, CLI resume, loss bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lfdm_cli.config.recipe import load_recipe
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
from lfdm_cli.lfae.config import AugmentationConfig, TransformConfig
from lfdm_cli.lfae.losses import (
    PERCEPTUAL_FALLBACK,
    PERCEPTUAL_VGG,
    L1SSIMPyramidLoss,
    VGG19Features,
    load_vgg19,
)
from lfdm_cli.lfae.transforms import RandomTPS, augment_frames, color_jitter, random_flip
from lfdm_cli.modelfolder import load_model_folder
from lfdm_cli.training.lfae_trainer import FramePairs, train_lfae


def make_video_dataset(path: Path, size: int = 32, frames: int = 8) -> Path:
    """A small lfdm dataset of SynthFaces videos: 2 subjects x 4 expressions, the 4th one 'test'."""
    from lfdm_cli.data.synthfaces import CLASSES, render_video

    path.mkdir(parents=True)
    (path / VIDEOS_DIR).mkdir()
    records = []
    for subject in range(2):
        for k, class_name in enumerate(CLASSES[:4]):
            vid = f"s{subject}_{class_name}"
            save_video_array(path / VIDEOS_DIR / f"{vid}.npy",
                             render_video(0, subject, class_name, 0, frames=frames, size=size))
            records.append(VideoRecord(id=vid, split="test" if k == 3 else "train", class_name=class_name,
                                       subject=f"s{subject}", frames=frames, height=size, width=size,
                                       source="synthfaces", file=f"{VIDEOS_DIR}/{vid}.npy"))
    write_classes(path / CLASSES_FILE, list(CLASSES[:4]))
    write_manifest(path / MANIFEST_FILE, records)
    meta = new_meta(size=size, fit="pad", importer="test", source="synthfaces")
    meta["complete"] = True
    write_meta(path, meta)
    return path


@pytest.fixture
def no_hub_vgg(tmp_path, monkeypatch):
    """No VGG19 in the torch hub cache, whatever this machine has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture
def fake_vgg_file(tmp_path):
    """A state dict in torchvision's vgg19 layout (random weights; the full model's keys)."""
    torch.manual_seed(0)
    state = {}
    channels = 3
    index = 0
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                 512, 512, 512, 512, "M"):
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, channels, 3, 3) * (2 / (9 * channels)) ** 0.5
        state[f"features.{index}.bias"] = torch.zeros(item)
        channels = item
        index += 2
    state["classifier.0.weight"] = torch.zeros(4, 4)
    file = tmp_path / "vgg19-test.pth"
    torch.save(state, file)
    return file


# ----------------------------------------------------------------------------- transforms

def test_tps_jacobian_matches_autograd():
    t = RandomTPS.sample(3, TransformConfig(sigma_affine=0.1, sigma_tps=0.05, points_tps=5),
                         generator=torch.Generator().manual_seed(1))
    coords = (torch.rand(3, 7, 2, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    t = RandomTPS(t.theta.double(), t.control_points.double(), t.control_params.double())
    warped = t.warp_coordinates(coords)
    gx = torch.autograd.grad(warped[..., 0].sum(), coords, retain_graph=True)[0]
    gy = torch.autograd.grad(warped[..., 1].sum(), coords)[0]
    expected = torch.stack([gx, gy], dim=-2)
    torch.testing.assert_close(t.jacobian(coords), expected, atol=1e-10, rtol=1e-8)


def test_tps_sampling_slices_the_global_batch():
    params = TransformConfig()
    whole = RandomTPS.sample(4, params, generator=torch.Generator().manual_seed(3))
    half = RandomTPS.sample(4, params, generator=torch.Generator().manual_seed(3), rows=slice(2, 4))
    assert torch.equal(whole.theta[2:], half.theta) and torch.equal(whole.control_params[2:], half.control_params)
    still = RandomTPS.sample(2, TransformConfig(sigma_affine=0.0, sigma_tps=0.0))
    points = torch.rand(2, 5, 2) * 2 - 1
    torch.testing.assert_close(still.warp_coordinates(points), points)
    frames = torch.rand(2, 3, 16, 16)
    assert whole.transform_frame(torch.rand(4, 3, 16, 16)).shape == (4, 3, 16, 16)
    assert still.transform_frame(frames).shape == frames.shape


def test_augmentation_treats_the_frames_of_a_sample_alike():
    rng_frames = np.random.default_rng(0)
    frame = rng_frames.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pair = np.stack([frame, frame])
    for seed in range(5):
        out = color_jitter(pair, np.random.default_rng(seed), 0.3, 0.3, 0.3, 0.2)
        assert out.dtype == np.uint8 and np.array_equal(out[0], out[1])
    assert np.array_equal(color_jitter(pair, np.random.default_rng(1), 0.3, 0.3, 0.3, 0.2),
                          color_jitter(pair, np.random.default_rng(1), 0.3, 0.3, 0.3, 0.2))
    clip = np.stack([frame, frame[::-1]])
    outcomes = {random_flip(clip, np.random.default_rng(s), True, True).tobytes() for s in range(40)}
    assert outcomes == {clip.tobytes(), clip[::-1].tobytes(), clip[:, :, ::-1].tobytes()}
    bright = color_jitter(pair, np.random.default_rng(2), brightness=0.5)
    ratio = bright.astype(float).sum() / pair.astype(float).sum()
    assert 0.5 <= ratio <= 1.5 and not np.array_equal(bright, pair)
    assert np.array_equal(augment_frames(pair, np.random.default_rng(0), AugmentationConfig(
        horizontal_flip=False, time_flip=False, brightness=0, contrast=0, saturation=0, hue=0)), pair)


def test_frame_pairs_come_from_one_video_in_time_order(tmp_path):
    data = Dataset.open(make_video_dataset(tmp_path / "d")).split("train")
    no_aug = AugmentationConfig(horizontal_flip=False, time_flip=False, brightness=0, contrast=0,
                                saturation=0, hue=0)
    pairs = FramePairs(data, num_repeats=3, augmentation=no_aug)
    assert len(pairs) == 3 * len(data.videos)
    for i in range(len(pairs)):
        item = pairs.get(i, np.random.default_rng(i))
        assert item["video"] == i % len(data.videos)
        a, b = item["frames"]
        assert a <= b
        video = data.load(data.videos[item["video"]])
        np.testing.assert_allclose(item["source"], video[a].transpose(2, 0, 1) / 255.0, atol=1e-6)
        np.testing.assert_allclose(item["driving"], video[b].transpose(2, 0, 1) / 255.0, atol=1e-6)
    by_subject = FramePairs(data, 1, no_aug, id_sampling=True)
    for seed in range(10):
        picked = data.videos[by_subject.get(0, np.random.default_rng(seed))["video"]]
        assert picked.subject == data.videos[0].subject


# ----------------------------------------------------------------------------- losses

def test_vgg19_loads_torchvision_weights(fake_vgg_file, tmp_path):
    vgg = load_vgg19(fake_vgg_file)
    feats = vgg(torch.rand(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    assert not any(p.requires_grad for p in vgg.parameters())
    assert set(VGG19Features().state_dict()) == {k for k in torch.load(fake_vgg_file, weights_only=True)
                                                 if k.startswith("features.") and int(k.split(".")[1]) < 30}
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(UserError, match="VGG19"):
        load_vgg19(bad)


def test_fallback_loss_is_zero_only_for_equal_images():
    loss = L1SSIMPyramidLoss([1.0, 0.5, 0.25, 0.125], [10.0] * 5)
    x = torch.rand(2, 3, 32, 32)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-5)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    value = loss(y, x)
    assert value.item() > 0.1
    value.backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- training runs

def test_tiny_run_lowers_the_loss_and_writes_a_model_folder(tmp_path, no_hub_vgg, capsys):
    data = make_video_dataset(tmp_path / "data")
    run = tmp_path / "run"
    result = train_lfae("tiny", data, run, device="cpu", max_steps=16, show_progress=False)
    assert result.step == 16
    assert "Warning: no VGG19 ImageNet weights found" in capsys.readouterr().err
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 17))
    assert {"perceptual", "equivariance_shift", "equivariance_affine", "loss", "lr"} <= set(log[0])
    first, last = np.mean([r["loss"] for r in log[:4]]), np.mean([r["loss"] for r in log[-4:]])
    assert last < 0.5 * first, (first, last)
    record = json.loads((run / "run.json").read_text())
    assert record["metadata"]["perceptual_loss"] == PERCEPTUAL_FALLBACK
    folder = load_model_folder(run / "model")
    assert folder.meta["resolution"] == 32 and folder.meta["lfae"]["num_regions"] == 4
    prov = folder.meta["provenance"]
    assert prov["perceptual_loss"] == PERCEPTUAL_FALLBACK and prov["recipe"] == "tiny" and prov["steps"] == 16
    from lfdm_cli.lfae.model import load_lfae

    model = load_lfae(folder)
    with torch.no_grad():
        out = model.reconstruct(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    assert out["optical_flow"].shape == (1, 8, 8, 2)
    assert sorted(p.name for p in (run / "previews").iterdir()) == ["step_0000005.png", "step_0000010.png",
                                                                  "step_0000015.png", "step_0000016.png"]


def test_cli_resume_equals_an_uninterrupted_run(tmp_path, lfdm, no_hub_vgg):
    data = make_video_dataset(tmp_path / "data")
    env = {"TORCH_HOME": str(tmp_path / "torch_home")}
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ["train", "lfae", "--recipe", "tiny", "--data", data, "--device", "cpu", "--quiet"]
    first = lfdm(*common, "--out", split, "--max-steps", "3", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(split / "model")
    resumed = lfdm(*common, "--out", split, "--max-steps", "6", "--resume", "--json", env=env)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["steps"] == 6 and summary["perceptual_loss"] == PERCEPTUAL_FALLBACK
    # The same six steps without interruption, in this process (also one thread).
    train_lfae("tiny", data, whole, device="cpu", max_steps=6, show_progress=False)
    a = load_file(str(whole / "model" / "lfae.safetensors"))
    b = load_file(str(split / "model" / "lfae.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_keeps_its_perceptual_loss(tmp_path, no_hub_vgg, fake_vgg_file, capsys):
    data = make_video_dataset(tmp_path / "data")
    vgg_run, fallback_run = tmp_path / "vgg", tmp_path / "fallback"
    train_lfae("tiny", data, vgg_run, device="cpu", max_steps=1, vgg_weights=fake_vgg_file, show_progress=False)
    assert json.loads((vgg_run / "run.json").read_text())["metadata"]["perceptual_loss"] == PERCEPTUAL_VGG
    with pytest.raises(UserError, match="trained with the VGG19 perceptual loss"):
        train_lfae("tiny", data, vgg_run, device="cpu", max_steps=2, resume=True, show_progress=False)
    train_lfae("tiny", data, fallback_run, device="cpu", max_steps=1, show_progress=False)
    capsys.readouterr()
    result = train_lfae("tiny", data, fallback_run, device="cpu", max_steps=2, resume=True,
                        vgg_weights=fake_vgg_file, show_progress=False)
    assert result.step == 2
    assert "keeps it" in capsys.readouterr().err
    state = json.loads((fallback_run / "checkpoints" / "step_0000002" / "state.json").read_text())
    assert state["metadata"]["perceptual_loss"] == PERCEPTUAL_FALLBACK


def test_dataset_must_match_the_recipe_size(tmp_path):
    data = make_video_dataset(tmp_path / "data", size=16)
    with pytest.raises(UserError, match="16x16 frames but recipe 'tiny' trains at 32x32"):
        train_lfae("tiny", data, tmp_path / "run", device="cpu", max_steps=1)


def test_shipped_paper_recipes_match_the_reference():
    for name, repeats, pad in (("mug128", 100, 3), ("mhad128", 100, 0), ("natops128", 5, 0)):
        recipe = load_recipe(name)
        train, model = recipe.lfae.train, recipe.lfae.model
        assert recipe.data.size == 128 and model.num_regions == 10
        assert (train.batch_size, train.max_epochs, train.num_repeats, train.epoch_milestones) == (100, 100, repeats, [60, 90])
        assert train.lr == 2e-4 and train.scales == [1.0, 0.5, 0.25, 0.125]
        assert model.region_predictor.pad == pad
        model.check_frame_size(128)
