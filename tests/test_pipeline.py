"""GenerationPipeline on a tiny random model: shapes, seeding, batching, the authors' composition."""

import numpy as np
import pytest
import torch

from lfdm_cli.diffusion import samplers
from lfdm_cli.diffusion.model import flow_from_volume
from lfdm_cli.errors import UserError
from lfdm_cli.pipeline import GenerationPipeline, SamplingSettings, cpu_generators
from model_factory import CONDITIONS, FRAMES, SIZE, TIMESTEPS, build_tiny_model_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def pipe(folder):
    return GenerationPipeline.from_folder(folder)


def images(n, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_model_folder_properties(pipe, folder):
    assert pipe.conditions == CONDITIONS
    assert pipe.resolution == SIZE and pipe.default_frames == FRAMES and pipe.timesteps == TIMESTEPS
    assert pipe.fps == 8.0 and pipe.fit == "pad"
    assert pipe.model_path == folder and len(pipe.digest) == 16
    assert pipe.default_settings() == SamplingSettings("ddim", 10, 0.0, 1.0, "reference")


def test_generate_shapes_ranges_and_timings(pipe):
    r = pipe.generate(images(2), ["happiness", "surprise"], seeds=[3, 4], steps=3)
    h = pipe.lfae.flow_size
    assert r.videos.shape == (2, FRAMES, 3, SIZE, SIZE) and r.warped.shape == r.videos.shape
    assert r.flows.shape == (2, FRAMES, h, h, 2) and r.occlusions.shape == (2, FRAMES, 1, h, h)
    assert r.videos.dtype == torch.float32 and r.videos.device.type == "cpu"
    assert 0 <= r.videos.min() and r.videos.max() <= 1
    # dynamic thresholding keeps sampled grids and occlusions in range
    assert r.flows.abs().max() <= 1 + 1e-6 and 0 <= r.occlusions.min() and r.occlusions.max() <= 1
    assert set(r.timings) == {"encode_s", "sample_s", "decode_s", "total_s"}
    assert r.settings.steps == 3 and r.seeds == [3, 4]
    assert pipe.generate(images(1), ["sadness"], seeds=[0], frames=9, steps=2).videos.shape[1] == 9


def test_same_seed_same_frames_other_seed_other_frames(pipe):
    x = images(1)
    a = pipe.generate(x, ["happiness"], seeds=[11], steps=3)
    b = pipe.generate(x, ["happiness"], seeds=[11], steps=3)
    c = pipe.generate(x, ["happiness"], seeds=[12], steps=3)
    assert torch.equal(a.videos, b.videos) and torch.equal(a.flows, b.flows)
    assert not torch.allclose(a.flows, c.flows, atol=1e-3)


def test_per_sample_generators_give_each_row_its_own_stream():
    shape = (3, 3, 4, 8, 8)
    batch = samplers.randn(shape, generator=cpu_generators([5, 6, 7]), device="cpu")
    for i, seed in enumerate([5, 6, 7]):
        single = samplers.randn((1, *shape[1:]), generator=cpu_generators([seed]), device="cpu")
        assert torch.equal(batch[i], single[0])


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("dpmpp", 0.0)])
@pytest.mark.parametrize("unet_batch", [1, None])
def test_batch_of_n_equals_n_single_runs(pipe, sampler, eta, unet_batch, monkeypatch):
    monkeypatch.setattr(pipe, "unet_batch", unet_batch)  # one sample per U-Net call, or the CPU rule
    x = images(3, seed=1)
    conds = ["happiness", "sadness", "surprise"]
    batch = pipe.generate(x, conds, seeds=[20, 21, 22], sampler=sampler, eta=eta, steps=4)
    for i in range(3):
        single = pipe.generate(x[i:i + 1], [conds[i]], seeds=[20 + i], sampler=sampler, eta=eta, steps=4)
        # Same noise and same computation (the U-Net sees a row at a time or the whole batch);
        # CPU kernels (the encoder's, the decoder's, the U-Net's when batched) sum in a
        # batch-size-dependent order, so the floats agree to rounding, and written uint8 frames
        # differ by at most one level.
        assert (batch.flows[i] - single.flows[0]).abs().max() < 1e-4
        assert (batch.videos[i] - single.videos[0]).abs().max() < 1e-4
        a = (batch.videos[i] * 255).round()
        b = (single.videos[0] * 255).round()
        assert (a - b).abs().max() <= 1 and (a != b).float().mean() < 0.01


def test_cpu_unet_rows_follow_the_activation_size(pipe, monkeypatch):
    from lfdm_cli import pipeline as P

    dim = pipe.dm.spec.unet.dim
    assert pipe.unet_batch is None
    assert pipe.unet_rows(40, 32, 32) == max(1, P.CPU_UNET_ELEMENTS // (40 * 32 * 32 * dim))
    monkeypatch.setattr(P, "CPU_UNET_ELEMENTS", 40 * 32 * 32 * dim * 3)
    assert pipe.unet_rows(40, 32, 32) == 3
    assert pipe.unet_rows(40, 64, 64) == 1  # never fewer than one
    monkeypatch.setattr(pipe, "unet_batch", 5)
    assert pipe.unet_rows(40, 32, 32) == 5  # an explicit setting wins
    calls = []
    real = pipe.dm.unet.forward
    monkeypatch.setattr(pipe.dm.unet, "forward", lambda x, *a, **k: calls.append(x.shape[0]) or real(x, *a, **k))
    monkeypatch.setattr(pipe, "unet_batch", 2)
    pipe.generate(images(3, seed=4), ["happiness"] * 3, seeds=[1, 2, 3], steps=2)
    assert calls == [2, 1, 2, 1]


def test_ddpm_batch_equals_singles(pipe):
    x = images(2, seed=2)
    batch = pipe.generate(x, ["happiness", "sadness"], seeds=[1, 2], sampler="ddpm")
    assert batch.settings.steps == TIMESTEPS
    for i, cond in enumerate(["happiness", "sadness"]):
        single = pipe.generate(x[i:i + 1], [cond], seeds=[1 + i], sampler="ddpm")
        assert (batch.flows[i] - single.flows[0]).abs().max() < 1e-4


def test_generate_is_the_authors_composition(pipe):
    """What the demo computes: z0 = encoder(x0); flows = dm.sample from the global RNG after
    torch.manual_seed; every frame decoded from the source image, one frame at a time."""
    x = images(1, seed=3)
    torch.manual_seed(1234)
    ours = pipe.generate(x, ["surprise"], seeds=None, sampler="ddim", steps=3, eta=1.0, ddim_spacing="reference")
    torch.manual_seed(1234)
    with torch.no_grad():
        fea = pipe.lfae.generator.encode(x)[-1]
        cond, null = pipe.dm.embed(["surprise"])
        vol = pipe.dm.sample(fea, cond, null_mask=null, sampler="ddim", steps=3, eta=1.0, spacing="reference")
        flow, occ = flow_from_volume(vol)
        frames = [pipe.lfae.decode(x, flow[:, k], occ[:, k])["prediction"] for k in range(flow.shape[1])]
    expected = torch.stack(frames, dim=1)
    assert torch.allclose(ours.flows, flow, atol=1e-6)
    assert torch.allclose(ours.videos, expected, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_seed_s_is_the_demos_manual_seed_s_on_cpu(pipe, sampler):
    """A single video with seed S draws exactly what torch.manual_seed(S) + the global RNG draws
    (the authors' demo seeds once and samples), so `lfdm generate --seed S` reproduces it on CPU."""
    x = images(1, seed=5)
    ours = pipe.generate(x, ["sadness"], seeds=[1234], sampler=sampler, steps=3, eta=1.0, ddim_spacing="reference")
    torch.manual_seed(1234)
    demo = pipe.generate(x, ["sadness"], seeds=None, sampler=sampler, steps=3, eta=1.0, ddim_spacing="reference")
    assert torch.equal(ours.flows, demo.flows) and torch.equal(ours.videos, demo.videos)


def test_encodes_once_and_decodes_all_frames_in_one_pass(pipe, monkeypatch):
    calls = {"encode": 0, "decode": []}
    real_encode, real_decode = pipe.lfae.generator.encode, pipe.lfae.generator.decode

    def encode(x):
        calls["encode"] += 1
        return real_encode(x)

    def decode(image, features, flow, occlusion):
        calls["decode"].append(flow.shape[0])
        return real_decode(image, features, flow, occlusion)

    monkeypatch.setattr(pipe.lfae.generator, "encode", encode)
    monkeypatch.setattr(pipe.lfae.generator, "decode", decode)
    x = images(2, seed=4)
    whole = pipe.generate(x, ["happiness", "sadness"], seeds=[0, 1], steps=2, chunk_size=2 * FRAMES)
    assert calls == {"encode": 1, "decode": [2 * FRAMES]}
    calls["encode"], calls["decode"] = 0, []
    default = pipe.generate(x, ["happiness", "sadness"], seeds=[0, 1], steps=2)
    # On the CPU the default is passes of CPU_DECODE_CHUNK frames (less memory, no slower).
    from lfdm_cli.pipeline import CPU_DECODE_CHUNK

    full, rest = divmod(2 * FRAMES, CPU_DECODE_CHUNK)
    assert calls["encode"] == 1 and calls["decode"] == [CPU_DECODE_CHUNK] * full + ([rest] if rest else [])
    assert torch.allclose(whole.videos, default.videos, atol=1e-5)
    calls["encode"], calls["decode"] = 0, []
    chunked = pipe.generate(x, ["happiness", "sadness"], seeds=[0, 1], steps=2, chunk_size=5)
    assert calls["encode"] == 1 and calls["decode"] == [5, 5, 2]
    assert torch.allclose(whole.videos, chunked.videos, atol=1e-5)


def test_runs_under_inference_mode(pipe, monkeypatch):
    seen = []
    real = pipe.dm.sample

    def sample(*args, **kwargs):
        seen.append(torch.is_inference_mode_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe.dm, "sample", sample)
    pipe.generate(images(1), ["happiness"], seeds=[0], steps=1)
    assert seen == [True]


def test_unknown_condition_lists_conditions_and_closest(pipe):
    with pytest.raises(UserError) as info:
        pipe.generate(images(1), ["happines"], seeds=[0])
    text = str(info.value)
    assert "happines" in text and "Did you mean 'happiness'" in text
    assert all(c in text for c in CONDITIONS)


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": TIMESTEPS + 1}, "--steps"),
    ({"sampler": "euler"}, "sampler"),
    ({"eta": -1.0}, "--eta"),
    ({"ddim_spacing": "leading"}, "spacing"),
])
def test_bad_settings_are_user_errors(pipe, kwargs, message):
    with pytest.raises(UserError, match=message):
        pipe.generate(images(1), ["happiness"], seeds=[0], **kwargs)


def test_ema_weights_are_the_default(folder):
    ema = GenerationPipeline.from_folder(folder)
    raw = GenerationPipeline.from_folder(folder, ema=False)
    x = images(1)
    a = ema.generate(x, ["happiness"], seeds=[0], steps=2)
    b = raw.generate(x, ["happiness"], seeds=[0], steps=2)
    assert not torch.allclose(a.flows, b.flows, atol=1e-4)


def test_prepare_images_fits_to_the_model(pipe):
    wide = np.full((20, 60, 3), 200, np.uint8)
    x = pipe.prepare_images([wide], "pad")
    assert x.shape == (1, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert x[0, :, 0].max() == 0 and abs(float(x[0, :, SIZE // 2].mean()) - 200 / 255) < 1e-6  # black bars
    assert pipe.prepare_images([wide], "stretch")[0, :, 0].min() > 0.7


def test_missing_bundled_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("LFDM_MODEL", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="LFDM_MODEL names .*nowhere, which does not exist"):
        GenerationPipeline.from_folder(None)
    monkeypatch.delenv("LFDM_MODEL")
    monkeypatch.setattr("lfdm_cli.pipeline.default_model_path", lambda: tmp_path / "weights" / "none")
    with pytest.raises(UserError, match="bundled model is not installed"):
        GenerationPipeline.from_folder(None)
