"""Reading reference stage-one checkpoints: key mapping, paper configuration, CLI, errors."""

import copy
import datetime
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lfdm_cli.convert import load_reference_lfae
from lfdm_cli.convert.lfae import PARTS, convert_reference_state, reference_lfae_config, reference_to_project_key
from lfdm_cli.errors import UserError
from lfdm_cli.lfae.config import LFAEModelConfig
from lfdm_cli.lfae.model import LFAE, load_lfae
from lfdm_cli.modelfolder import load_model_folder

FIXTURES = Path(__file__).parent / "fixtures" / "reference_parity"
CHECKPOINT = FIXTURES / "lfae_checkpoint.pth"
CONFIG = FIXTURES / "lfae_config.yaml"


def paper_yaml() -> dict:
    """config/mug128.yaml: the fixture YAML with the fixture README's size reductions undone."""
    data = yaml.safe_load(CONFIG.read_text())
    data["dataset_params"]["frame_shape"] = 128
    mp = data["model_params"]
    mp["num_regions"] = 10
    mp["region_predictor_params"].update(block_expansion=32, max_features=1024, num_blocks=5)
    mp["bg_predictor_params"].update(block_expansion=32, max_features=1024, num_blocks=5)
    mp["generator_params"].update(block_expansion=64, max_features=512, num_bottleneck_blocks=6)
    mp["generator_params"]["pixelwise_flow_predictor_params"].update(block_expansion=64, max_features=1024,
                                                                     num_blocks=5)
    mp["avd_network_params"] = {"id_bottle_size": 64, "pose_bottle_size": 64}
    return data


@pytest.fixture(scope="module")
def full_keys():
    return json.loads((FIXTURES / "keys_full_config.json").read_text())["lfae"]


@pytest.fixture(scope="module")
def paper_model():
    return LFAE(LFAEModelConfig(), 128)


def test_default_config_is_the_papers():
    config, size = reference_lfae_config(paper_yaml(), source="mug128.yaml")
    assert size == 128
    assert config == LFAEModelConfig()


@pytest.mark.parametrize("variant", ["mug128", "mhad128", "natops128"])
def test_full_size_key_set_maps_onto_the_paper_model(variant, full_keys, paper_model):
    listing = full_keys[variant] if "generator" in full_keys[variant] else full_keys["mug128"]
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    parts = {p: {key: torch.zeros(shape, dtype=dtypes[dtype]) for key, shape, dtype, _ in listing[p]}
             for p in PARTS}
    state = convert_reference_state(parts, paper_model, source=variant)
    assert set(state) == set(paper_model.state_dict())
    assert sum(len(parts[p]) for p in PARTS) == len(state)
    fresh = copy.deepcopy(paper_model)
    fresh.load_state_dict(state, strict=True)
    # Parameters (not buffers) line up one to one with the reference optimizer's parameter list.
    order = full_keys["mug128"]["optimizer_param_order"]
    mapped = [reference_to_project_key(k.split(".", 1)[0], k.split(".", 1)[1]) for k in order]
    assert sorted(mapped) == sorted(name for name, _ in paper_model.named_parameters())
    assert sum(p.numel() for p in paper_model.parameters()) == full_keys["mug128"]["num_params"]


def test_pad_zero_is_honoured():
    data = paper_yaml()
    data["model_params"]["region_predictor_params"]["pad"] = 0
    config, _ = reference_lfae_config(data)
    assert config.region_predictor.pad == 0
    data = yaml.safe_load(CONFIG.read_text())
    data["model_params"]["region_predictor_params"]["pad"] = 0
    model = LFAE(reference_lfae_config(data)[0], 64)
    with torch.no_grad():
        params = model.region_predictor(torch.rand(1, 3, 64, 64))
    assert params.heatmap.shape == (1, 5, 10, 10)  # 16x16 logits shrink by the unpadded 7x7 conv


def test_missing_yaml_keys_take_the_reference_constructor_defaults():
    data = yaml.safe_load(CONFIG.read_text())
    del data["model_params"]["generator_params"]["skips"]
    del data["model_params"]["region_predictor_params"]["pca_based"]
    data["model_params"]["estimate_affine"] = False
    data["model_params"]["generator_params"]["pixelwise_flow_predictor_params"]["use_covar_heatmap"] = False
    config, _ = reference_lfae_config(data)
    assert config.generator.skips is False and config.region_predictor.pca_based is False


def test_config_errors_are_clear():
    data = yaml.safe_load(CONFIG.read_text())
    data["model_params"]["region_predictor_params"]["temprature"] = 0.1
    with pytest.raises(UserError, match="temprature"):
        reference_lfae_config(data, source="x.yaml")
    data = yaml.safe_load(CONFIG.read_text())
    data["dataset_params"]["frame_shape"] = 100
    with pytest.raises(UserError, match="Frame size 100"):
        reference_lfae_config(data, source="x.yaml")


def test_checkpoint_that_does_not_fit_the_config(tmp_path):
    data = yaml.safe_load(CONFIG.read_text())
    data["model_params"]["num_regions"] = 6
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"shape mismatch .*regions\.weight"):
        load_reference_lfae(CHECKPOINT, wrong)


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    bad = tmp_path / "pickled.pth"
    ckpt = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    ckpt["extra"] = datetime.datetime(2023, 6, 1)  # any non-tensor class must not be unpickled
    torch.save(ckpt, bad)
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_reference_lfae(bad, CONFIG)


def test_stage_two_checkpoint_is_named(tmp_path):
    other = tmp_path / "dm.pth"
    torch.save({"example": 1, "diffusion": {"w": torch.zeros(1)}}, other)
    with pytest.raises(UserError, match="not a stage-one"):
        load_reference_lfae(other, CONFIG)


def test_cli_round_trip(lfdm, tmp_path):
    out_dir = tmp_path / "model"
    res = lfdm("convert", "lfae", CHECKPOINT, "--config", CONFIG, "-o", out_dir, "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["resolution"] == 64 and summary["latent_shape"] == [32, 16, 16]

    folder = load_model_folder(out_dir)
    assert folder.meta["provenance"]["source"] == "reference checkpoint"
    assert folder.meta["provenance"]["epoch"] == 100 and folder.meta["provenance"]["examples"] == 4650000
    model = load_lfae(folder)
    reference = load_reference_lfae(CHECKPOINT, CONFIG).model
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model.reconstruct(x, x.flip(0))
        b = reference.reconstruct(x, x.flip(0))
    for key in ("prediction", "optical_flow", "occlusion_map", "latent"):
        assert torch.equal(a[key], b[key]), key

    again = lfdm("convert", "lfae", CHECKPOINT, "--config", CONFIG, "-o", out_dir)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_cli_missing_and_corrupt_checkpoint(lfdm, tmp_path):
    res = lfdm("convert", "lfae", tmp_path / "nope.pth", "--config", CONFIG, "-o", tmp_path / "m")
    assert res.returncode == 2
    assert "Checkpoint not found" in res.stderr and "Traceback" not in res.stderr

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(CHECKPOINT.read_bytes()[:100_000])
    res = lfdm("convert", "lfae", corrupt, "--config", CONFIG, "-o", tmp_path / "m")
    assert res.returncode == 2
    assert "not a readable PyTorch checkpoint" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "m").exists()


def test_load_lfae_rejects_mixed_up_weights(tmp_path):
    from lfdm_cli.config.schema import to_dict
    from lfdm_cli.modelfolder import save_model_folder

    converted = load_reference_lfae(CHECKPOINT, CONFIG)
    config = copy.deepcopy(converted.config)
    config.num_regions = 4
    save_model_folder(tmp_path / "m", {"resolution": 64, "lfae": to_dict(config)},
                      {"lfae": converted.model.state_dict()})
    with pytest.raises(UserError, match="do not fit"):
        load_lfae(load_model_folder(tmp_path / "m"))
    shutil.rmtree(tmp_path / "m")
