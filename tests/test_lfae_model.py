"""LFAE entry points on tiny configurations: shapes, batching, consistency, training readiness."""

import copy

import pytest
import torch

from lfdm_cli.config.schema import from_dict
from lfdm_cli.errors import UserError
from lfdm_cli.lfae.config import LFAEModelConfig
from lfdm_cli.lfae.model import LFAE, SourceEncoding

SIZE = 32


def tiny_config(**overrides) -> LFAEModelConfig:
    data = {
        "num_regions": 3,
        "region_predictor": {"block_expansion": 4, "max_features": 16, "num_blocks": 2},
        "bg_predictor": {"block_expansion": 4, "max_features": 16, "num_blocks": 2},
        "generator": {"block_expansion": 4, "max_features": 16, "num_bottleneck_blocks": 1,
                      "pixelwise_flow_predictor": {"block_expansion": 4, "max_features": 16, "num_blocks": 2}},
    }
    for path, value in overrides.items():
        node = data
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return from_dict(LFAEModelConfig, data)


def perturbed_model(config=None, seed=0) -> LFAE:
    """A tiny model in eval mode whose batch-norm statistics and heads are not at their trivial init."""
    torch.manual_seed(seed)
    model = LFAE(config or tiny_config(), SIZE)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        if model.bg_predictor.head is not None:
            model.bg_predictor.head.weight.normal_(0, 0.05)
        model.region_predictor.region_head.weight.mul_(3)
    return model.eval()


def frames(n, seed=1, size=SIZE):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return perturbed_model()


def test_reconstruct_shapes(model):
    with torch.no_grad():
        out = model.reconstruct(frames(2), frames(2, seed=2))
    assert out["prediction"].shape == (2, 3, SIZE, SIZE)
    assert out["deformed"].shape == (2, 3, SIZE, SIZE)
    assert out["optical_flow"].shape == (2, 8, 8, 2)
    assert out["occlusion_map"].shape == (2, 1, 8, 8)
    assert out["latent"].shape == (2, *model.latent_shape) == (2, 16, 8, 8)
    assert out["bg_params"].shape == (2, 3, 3)
    rp = out["source_region_params"]
    assert rp.shift.shape == (2, 3, 2) and rp.affine.shape == (2, 3, 2, 2) and rp.heatmap.shape == (2, 3, 8, 8)
    assert torch.allclose(rp.heatmap.sum(dim=(2, 3)), torch.ones(2, 3))
    assert model.flow_size == 8
    assert 0 < out["occlusion_map"].min() and out["occlusion_map"].max() < 1
    assert torch.allclose(torch.matmul(rp.u, rp.d), rp.affine)


def test_identity_pair_gives_near_identity_flow():
    """With the background head at its identity init and driving == source every sparse motion is the
    identity, so the dense flow is the identity grid whatever the mask."""
    torch.manual_seed(0)
    fresh = LFAE(tiny_config(), SIZE).eval()
    x = frames(1)
    from lfdm_cli.lfae.layers import coordinate_grid

    with torch.no_grad():
        flow, _ = fresh.flow_and_occlusion(x, x)
    assert torch.allclose(flow[0], coordinate_grid(8, 8), atol=1e-5)


def test_flow_and_occlusion_matches_reconstruct(model):
    src, drv = frames(2), frames(6, seed=3).view(2, 3, 3, SIZE, SIZE)
    with torch.no_grad():
        flow, occ = model.flow_and_occlusion(src, drv, chunk_size=4)
        assert flow.shape == (2, 3, 8, 8, 2) and occ.shape == (2, 3, 1, 8, 8)
        for b in range(2):
            for f in range(3):
                rec = model.reconstruct(src[b:b + 1], drv[b, f:f + 1])
                assert (flow[b, f] - rec["optical_flow"][0]).abs().max() < 1e-5
                assert (occ[b, f] - rec["occlusion_map"][0]).abs().max() < 1e-5
        flat_flow, flat_occ = model.flow_and_occlusion(src, drv[:, 0])
        chunked_flow, chunked_occ = model.flow_and_occlusion(src, drv[:, 0], chunk_size=1)
    assert torch.allclose(flat_flow, flow[:, 0], atol=1e-6) and torch.allclose(flat_occ, occ[:, 0], atol=1e-6)
    assert torch.allclose(chunked_flow, flat_flow, atol=1e-6) and torch.allclose(chunked_occ, flat_occ, atol=1e-6)


def test_decode_reproduces_reconstruct(model):
    src, drv = frames(2), frames(2, seed=4)
    with torch.no_grad():
        rec = model.reconstruct(src, drv)
        dec = model.decode(src, rec["optical_flow"], rec["occlusion_map"])
    assert torch.equal(dec["prediction"], rec["prediction"])
    assert torch.equal(dec["deformed"], rec["deformed"])


def test_decode_many_frames_of_one_source(model):
    src = frames(1)
    with torch.no_grad():
        flow, occ = model.flow_and_occlusion(src, frames(5, seed=5).unsqueeze(0))
        enc = model.encode(src)
        assert isinstance(enc, SourceEncoding) and enc.latent.shape == (1, 16, 8, 8)
        batched = model.decode(enc, flow, occ)
        chunked = model.decode(enc, flow, occ, chunk_size=2)
        flat = model.decode(enc, flow[0], occ[0])
        looped = [model.decode(src, flow[:, i], occ[:, i])["prediction"] for i in range(5)]
    assert batched["prediction"].shape == (1, 5, 3, SIZE, SIZE)
    assert flat["prediction"].shape == (5, 3, SIZE, SIZE)
    assert torch.allclose(batched["prediction"][0], flat["prediction"], atol=1e-6)
    assert torch.allclose(batched["prediction"], chunked["prediction"], atol=1e-6)
    for i in range(5):
        assert (batched["prediction"][0, i] - looped[i][0]).abs().max() < 1e-5


def test_decode_several_sources_with_several_frames_each(model):
    src = frames(2)
    flows = torch.stack([model.flow_and_occlusion(src, frames(2, seed=s))[0] for s in (6, 7)], dim=1)
    occs = torch.rand(2, 2, 1, 8, 8)
    with torch.no_grad():
        grouped = model.decode(src, flows, occs, chunk_size=3)["prediction"]
        flat = model.decode(src, flows.reshape(4, 8, 8, 2), occs.reshape(4, 1, 8, 8))["prediction"]
        single = model.decode(src[1:], flows[1, 1:], occs[1, 1:])["prediction"]
    assert torch.allclose(grouped.reshape(4, 3, SIZE, SIZE), flat, atol=1e-6)
    assert (grouped[1, 1] - single[0]).abs().max() < 1e-5


def test_shape_errors(model):
    with pytest.raises(ValueError, match="source must have shape"):
        model.encode(frames(1, size=64))
    enc = model.encode(frames(2))
    with pytest.raises(ValueError, match="cannot be shared out"):
        model.decode(enc, torch.zeros(3, 8, 8, 2), torch.zeros(3, 1, 8, 8))
    with pytest.raises(UserError, match="Frame size 40"):
        LFAE(tiny_config(), 40)


@pytest.mark.parametrize("overrides", [
    {"bg_predictor.bg_type": "zero"},
    {"bg_predictor.bg_type": "shift"},
    {"bg_predictor.bg_type": "perspective"},
    {"region_predictor.pca_based": False, "estimate_affine": True},
    {"region_predictor.pca_based": False, "estimate_affine": False,
     "generator.pixelwise_flow_predictor.use_covar_heatmap": False},
    {"generator.pixelwise_flow_predictor.estimate_occlusion_map": False},
    {"generator.pixelwise_flow_predictor.use_deformed_source": False, "generator.skips": False},
    {"region_predictor.pad": 0},
])
def test_reference_variants_run(overrides):
    model = perturbed_model(tiny_config(**overrides))
    with torch.no_grad():
        out = model.reconstruct(frames(2), frames(2, seed=2))
        flow, occ = model.flow_and_occlusion(frames(2), frames(2, seed=2))
    assert torch.isfinite(out["prediction"]).all()
    assert torch.allclose(flow, out["optical_flow"], atol=1e-5)
    estimates_occ = model.config.generator.pixelwise_flow_predictor.estimate_occlusion_map
    assert (occ is None) == (not estimates_occ) == (out["occlusion_map"] is None)


def test_covariance_heatmap_needs_covariances():
    with pytest.raises(UserError, match="use_covar_heatmap"):
        tiny_config(**{"region_predictor.pca_based": False, "estimate_affine": False})


def test_every_parameter_trains():
    torch.manual_seed(0)
    model = LFAE(tiny_config(), SIZE).train()
    out = model(frames(2), frames(2, seed=2))
    loss = (out["prediction"] - frames(2, seed=2)).abs().mean() + out["source_region_params"].shift.pow(2).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # Batch-norm running statistics move only in training mode.
    assert model.generator.stem.norm.num_batches_tracked.item() == 1


def test_seeded_construction_is_deterministic():
    torch.manual_seed(3)
    a = LFAE(tiny_config(), SIZE)
    torch.manual_seed(3)
    b = LFAE(tiny_config(), SIZE)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_autocast_keeps_geometry_in_float32(model):
    m = copy.deepcopy(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.reconstruct(frames(2), frames(2, seed=2))
    assert out["optical_flow"].dtype == torch.float32
    assert out["source_region_params"].affine.dtype == torch.float32
    assert torch.isfinite(out["prediction"]).all()
    with torch.no_grad():
        ref = m.reconstruct(frames(2), frames(2, seed=2))
    assert (out["optical_flow"] - ref["optical_flow"]).abs().max() < 0.1
