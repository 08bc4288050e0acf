"""Chaining clips: every strategy, frame ranges, flow composition, and re-anchoring's guarantee."""

import json

import pytest
import torch
import torch.nn.functional as F

from lfdm_cli.chain import STRATEGIES, chain, compose_flows, expected_length, identity_grid
from lfdm_cli.errors import UserError
from lfdm_cli.io import probe_video
from lfdm_cli.pipeline import GenerationPipeline, SamplingSettings
from model_factory import FRAMES, SIZE, build_tiny_model_folder, run_main, write_test_image

FAST = SamplingSettings(sampler="ddim", steps=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def pipe(folder):
    return GenerationPipeline.from_folder(folder)


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_chains_three_segments(pipe, image, strategy):
    result = chain(pipe, image, ["happiness", "sadness"], segments=3, strategy=strategy, overlap=2, seed=5,
                   settings=FAST)
    n = expected_length(3, FRAMES, strategy, overlap=2)
    assert result.frames.shape == (n, 3, SIZE, SIZE) and result.frames.dtype == torch.float32
    assert 0 <= result.frames.min() and result.frames.max() <= 1
    segs = [s.to_dict() for s in result.segments]
    assert [s["condition"] for s in segs] == ["happiness", "sadness", "happiness"]  # the list repeats
    assert [s["seed"] for s in segs] == [5, 6, 7]
    assert segs[0]["frames"] == [0, FRAMES] and segs[0]["anchor_frame"] is None
    assert segs[-1]["frames"][1] == n
    for prev, cur in zip(segs, segs[1:]):
        if strategy == "crossfade":
            assert cur["frames"][0] == prev["frames"][1] - 2  # two frames shared and blended
            assert cur["anchor_frame"] == cur["frames"][0]
        else:
            assert cur["frames"][0] == prev["frames"][1]  # frame 0 of a segment re-renders its anchor
            assert cur["anchor_frame"] == prev["frames"][1] - 1


def test_first_segment_is_a_plain_generation(pipe, image):
    single = pipe.generate(image[None], ["surprise"], seeds=[9], steps=2)
    for strategy in STRATEGIES:
        result = chain(pipe, image, ["surprise"], segments=2, strategy=strategy, seed=9, settings=FAST, overlap=2)
        head = FRAMES - (2 if strategy == "crossfade" else 0)
        assert torch.allclose(result.frames[:head], single.videos[0, :head], atol=1e-5), strategy


def recording_decode(pipe, monkeypatch):
    sources = []
    real = pipe.decode

    def decode(encoding, flow, occlusion, **kwargs):
        sources.append(encoding.image)
        return real(encoding, flow, occlusion, **kwargs)

    monkeypatch.setattr(pipe, "decode", decode)
    return sources


@pytest.mark.parametrize("strategy", ["reanchor", "crossfade"])
def test_reanchoring_never_decodes_from_a_generated_frame(pipe, image, monkeypatch, strategy):
    sources = recording_decode(pipe, monkeypatch)
    chain(pipe, image, ["happiness", "surprise"], segments=3, strategy=strategy, overlap=2, settings=FAST)
    assert len(sources) >= 3
    assert all(torch.equal(s, image[None]) for s in sources)


def test_naive_decodes_from_the_last_generated_frame(pipe, image, monkeypatch):
    sources = recording_decode(pipe, monkeypatch)
    result = chain(pipe, image, ["happiness"], segments=3, strategy="naive", settings=FAST)
    assert torch.equal(sources[0], image[None])
    assert torch.allclose(sources[1][0], result.frames[FRAMES - 1], atol=1e-6)
    assert not torch.equal(sources[1], image[None])


def test_noised_conditioning_changes_motion_not_the_first_segment(pipe, image):
    naive = chain(pipe, image, ["happiness"], segments=2, strategy="naive", settings=FAST)
    noised = chain(pipe, image, ["happiness"], segments=2, strategy="noised", settings=FAST)
    assert noised.cond_noise == 0.1
    assert torch.equal(naive.frames[:FRAMES], noised.frames[:FRAMES])
    assert not torch.allclose(naive.frames[FRAMES:], noised.frames[FRAMES:], atol=1e-4)


def test_compose_with_identity_is_the_new_flow():
    flow = torch.rand(2, 3, 8, 8, 2) * 2 - 1
    occ = torch.rand(2, 3, 1, 8, 8)
    ident = identity_grid(8, 8).expand(2, 8, 8, 2)
    total, total_occ = compose_flows(ident, torch.ones(2, 1, 8, 8), flow, occ)
    assert torch.allclose(total, flow, atol=1e-6) and torch.allclose(total_occ, occ, atol=1e-6)
    assert compose_flows(None, None, flow, occ) == (flow, occ)


def test_compose_translations_adds_them_and_multiplies_occlusions():
    h = w = 16
    ident = identity_grid(h, w)
    a = (ident + torch.tensor([2 / w, 0.0]))[None]  # accumulated: sample one pixel to the right
    g = (ident + torch.tensor([0.0, 4 / h]))[None, None]  # new: two pixels down
    acc_occ = torch.full((1, 1, h, w), 0.5)
    total, occ = compose_flows(a, acc_occ, g, torch.full((1, 1, 1, h, w), 0.8))
    expected = ident + torch.tensor([2 / w, 4 / h])
    assert torch.allclose(total[0, 0], expected, atol=1e-5)
    assert torch.allclose(occ, torch.full_like(occ, 0.4))
    # warping twice equals warping once with the composed flow (away from the borders)
    img = torch.rand(1, 3, h, w)
    twice = F.grid_sample(F.grid_sample(img, a, align_corners=False), g[:, 0], align_corners=False)
    once = F.grid_sample(img, total[:, 0], align_corners=False)
    assert torch.allclose(twice[..., 2:-3, 2:-3], once[..., 2:-3, 2:-3], atol=1e-5)


def test_bad_arguments(pipe, image):
    with pytest.raises(UserError, match="Did you mean 'naive'"):
        chain(pipe, image, ["happiness"], strategy="naiv")
    with pytest.raises(UserError, match="overlap"):
        chain(pipe, image, ["happiness"], strategy="crossfade", overlap=FRAMES)
    with pytest.raises(UserError, match="Did you mean 'happiness'"):
        chain(pipe, image, ["happiness", "happy"])


def test_chain_cli_writes_video_and_segment_sidecar(folder, tmp_path, capsys):
    img = write_test_image(tmp_path / "face.png")
    out = tmp_path / "long.mp4"
    code = run_main("chain", img, "--conditions", "happiness,surprise,sadness", "--model", folder, "-o", out,
                    "--steps", "2", "--device", "cpu", "--quiet", "--seed", "3")
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    n = expected_length(3, FRAMES, "naive")
    assert probe_video(out)["frames"] == n
    meta = json.loads((tmp_path / "long.json").read_text())
    assert meta["strategy"] == "naive" and meta["frames"] == n
    assert [(s["condition"], s["seed"], s["frames"]) for s in meta["segments"]] == [
        ("happiness", 3, [0, FRAMES]), ("surprise", 4, [FRAMES, 2 * FRAMES - 1]),
        ("sadness", 5, [2 * FRAMES - 1, n])]
    assert meta["model"]["digest"] and meta["steps"] == 2
    assert run_main("chain", img, "--conditions", "happiness", "--model", folder, "-o", out, "--quiet") == 2
    assert "already exists" in capsys.readouterr().err
