"""Stage one computes what the authors' code computes.

The fixtures (copied from the shared reference_parity set) are a randomly initialised checkpoint in
the reference's training layout, its YAML, fixed inputs and every output and intermediate the
reference code produced from them in float32 on CPU. On a CPU with the fixture machine's
instruction set (AVX2 dispatch) the outputs are bitwise equal; elsewhere kernel choice changes the
last bits, so the comparison allows 1e-4 absolute (the fixture README's tolerance, ten times its
measured float32-vs-float64 gap).
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lfdm_cli.convert import load_reference_lfae

FIXTURES = Path(__file__).parent / "fixtures" / "reference_parity"
ATOL = 1e-4


@pytest.fixture(scope="module")
def reference():
    return load_file(str(FIXTURES / "lfae_io.safetensors"))


@pytest.fixture(scope="module")
def converted():
    return load_reference_lfae(FIXTURES / "lfae_checkpoint.pth", FIXTURES / "lfae_config.yaml")


@pytest.fixture(scope="module")
def outputs(converted, reference):
    model = converted.model
    src, drv = reference["in/source"], reference["in/driving"]
    with torch.no_grad():
        rec = model.reconstruct(src, drv, return_intermediates=True)
        enc = model.encode(src)
        fwf = model.decode(enc, reference["in/flow"], reference["in/occlusion"])
    got = {}
    inter = rec["intermediates"]
    for side in ("source", "driving"):
        params = rec[f"{side}_region_params"]
        for name in ("shift", "covar", "heatmap", "affine"):
            got[f"rp_{side}/{name}"] = getattr(params, name)
        # The reference returns u and d flattened to (B*K, 2, 2).
        got[f"rp_{side}/u"] = params.u.reshape(-1, 2, 2)
        got[f"rp_{side}/d"] = params.d.reshape(-1, 2, 2)
        got[f"rp_{side}/down_image"] = inter[f"region_predictor/{side}/down_image"]
        got[f"rp_{side}/region_logits"] = inter[f"region_predictor/{side}/region_logits"]
    got["bg_params"] = rec["bg_params"]
    got["gen/bottle_neck_feat"] = rec["latent"]
    for name in ("deformed", "optical_flow", "occlusion_map", "prediction"):
        got[f"gen/{name}"] = rec[name]
    for name in ("down_image", "heatmap_representation", "sparse_motion", "sparse_deformed", "mask_logits",
                 "occlusion_logits"):
        got[f"pfp/{name}"] = inter[f"flow_predictor/{name}"]
    got["fwf/prediction"] = fwf["prediction"]
    got["fwf/deformed"] = fwf["deformed"]
    got["compute_fea"] = enc.latent
    return got


def test_checkpoint_metadata(converted):
    assert converted.frame_size == 64
    assert converted.epoch == 100 and converted.examples == 4650000
    assert converted.config.num_regions == 5 and converted.config.generator.num_bottleneck_blocks == 2
    assert not converted.model.training


def test_every_reference_tensor_is_covered(reference, outputs):
    stored = {k for k in reference if not k.startswith("in/")}
    assert stored == set(outputs)


@pytest.mark.parametrize("name", sorted(
    k for k in load_file(str(FIXTURES / "lfae_io.safetensors")) if not k.startswith("in/")))
def test_matches_reference(name, reference, outputs):
    expected, got = reference[name], outputs[name]
    assert got.dtype == torch.float32
    assert tuple(got.shape) == tuple(expected.shape), name
    diff = (got - expected).abs().max().item()
    assert diff <= ATOL, f"{name}: max abs diff {diff:.3g} > {ATOL}"


def test_anti_alias_kernel_is_rebuilt_exactly(converted):
    """Fresh models build the Gaussian kernel buffer the reference stores in its checkpoints."""
    from lfdm_cli.lfae.model import LFAE

    fresh = LFAE(converted.config, converted.frame_size)
    assert torch.equal(fresh.region_predictor.downsample.kernel, converted.model.region_predictor.downsample.kernel)
    assert torch.equal(fresh.generator.flow_predictor.downsample.kernel,
                       converted.model.generator.flow_predictor.downsample.kernel)


def test_batched_decode_of_one_source_matches_per_frame_reference(converted, reference):
    """K frames of one source decoded in one pass equal the reference's one-frame-at-a-time loop."""
    model = converted.model
    src = reference["in/source"][:1]
    flows, occs = reference["in/flow"], reference["in/occlusion"]
    with torch.no_grad():
        per_frame = [model.decode(src, flows[i:i + 1], occs[i:i + 1])["prediction"] for i in range(2)]
        batched = model.decode(model.encode(src), flows.unsqueeze(0), occs.unsqueeze(0))["prediction"]
    assert batched.shape == (1, 2, 3, 64, 64)
    for i in range(2):
        assert (batched[0, i] - per_frame[i][0]).abs().max().item() <= 1e-6
