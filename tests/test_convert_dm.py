"""Converting the authors' stage-two checkpoints: key mapping (also at full paper size), checks of
the deterministic tensors, error messages, and the `lfdm convert dm` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lfdm_cli.convert import load_reference_dm
from lfdm_cli.convert.dm import (PRESETS, ROTARY_KEY, UNET_PREFIX, map_reference_key, read_reference_checkpoint,
                                 spec_from_reference_config)
from lfdm_cli.diffusion.model import FlowDiffusion, load_dm
from lfdm_cli.diffusion.schedule import SCHEDULE_TABLES
from lfdm_cli.errors import UserError
from lfdm_cli.modelfolder import save_model_folder

FIX = Path(__file__).parent / "fixtures" / "reference_parity"
CKPT = FIX / "dm_checkpoint.pth"
CONFIG = FIX / "dm_config.json"


def check_key_set(rows: list, spec) -> None:
    """Every reference key of a state-dict listing maps onto the model built from `spec`."""
    with torch.device("meta"):
        model = FlowDiffusion(spec)
    ours = {k: tuple(v.shape) for k, v in model.unet.state_dict().items()}
    mapped = {}
    for key, shape, _dtype, _kind in rows:
        if key in SCHEDULE_TABLES:
            assert shape == [spec.diffusion.timesteps]
            continue
        assert key.startswith(UNET_PREFIX), key
        sub = key[len(UNET_PREFIX):]
        if ROTARY_KEY.search(sub):
            assert tuple(shape) == tuple(model.unet.rotary.freqs.shape)
            continue
        target = map_reference_key(sub)
        assert target is not None, f"unmapped reference key {key}"
        assert target not in mapped, f"two reference keys map to {target}"
        mapped[target] = tuple(shape)
    missing = sorted(set(ours) - set(mapped))
    unexpected = sorted(set(mapped) - set(ours))
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    wrong = [k for k in ours if ours[k] != mapped[k]]
    assert not wrong, [(k, ours[k], mapped[k]) for k in wrong[:5]]


@pytest.mark.parametrize("variant, preset", [("mug_mhad", "mug"), ("natops", "natops")])
def test_full_size_key_set_converts(variant, preset):
    keys = json.loads((FIX / "keys_full_config.json").read_text())["dm"][variant]
    spec = spec_from_reference_config(preset)
    assert (spec.unet.dim, spec.unet.dim_mults, spec.fea_channels, spec.num_frames, spec.latent_size) == \
        (64, [1, 2, 4, 8], 256, 40, 32)
    check_key_set(keys["diffusion"], spec)
    with torch.device("meta"):
        model = FlowDiffusion(spec)
    # Same parameter count as the reference (the rotary frequencies are buffers in both).
    assert sum(p.numel() for p in model.unet.parameters()) == keys["num_params"]


def test_fixture_checkpoint_key_set():
    state = read_reference_checkpoint(CKPT)
    rows = [[k, list(v.shape), str(v.dtype), ""] for k, v in state.items()]
    check_key_set(rows, spec_from_reference_config(CONFIG))


def test_convert_builds_the_fixture_configuration():
    model = load_reference_dm(CKPT, CONFIG)
    spec = model.spec
    assert (spec.unet.dim, spec.unet.dim_mults, spec.fea_channels, spec.num_frames, spec.latent_size) == \
        (8, [1, 2, 4], 32, 10, 16)
    assert spec.cond_dim == 768 and not spec.unet.learn_null_cond and spec.diffusion.loss_type == "l2"
    assert spec.diffusion.use_dynamic_thres and spec.diffusion.null_cond_prob == 0.1
    assert not model.training


def test_natops_upsampling_and_learned_null():
    spec = spec_from_reference_config("natops")
    assert spec.unet.learn_null_cond and not spec.unet.use_deconv and spec.unet.padding_mode == "reflect"
    assert map_reference_key("ups.0.4.1.weight") == map_reference_key("ups.0.4.weight") == "up_levels.0.resample.conv.weight"
    assert map_reference_key("null_cond_emb") == "null_cond"
    assert map_reference_key("ups.0.9.weight") is None


def _modified_checkpoint(tmp_path, edit) -> Path:
    ckpt = torch.load(str(CKPT), map_location="cpu", weights_only=True)
    edit(ckpt["diffusion"])
    path = tmp_path / "edited.pth"
    torch.save(ckpt, str(path))
    return path


def test_schedule_and_rotary_are_checked(tmp_path):
    def other_schedule(sd):
        sd["betas"] = sd["betas"] * 1.01

    with pytest.raises(UserError, match="another noise schedule"):
        load_reference_dm(_modified_checkpoint(tmp_path, other_schedule), CONFIG)

    def other_freqs(sd):
        sd["denoise_fn.downs.0.3.fn.fn.fn.rotary_emb.freqs"] = sd["denoise_fn.downs.0.3.fn.fn.fn.rotary_emb.freqs"] * 2

    with pytest.raises(UserError, match="rotary"):
        load_reference_dm(_modified_checkpoint(tmp_path, other_freqs), CONFIG)

    cfg = json.loads(CONFIG.read_text())
    cfg["gaussian_diffusion"]["timesteps"] = 500
    with pytest.raises(UserError, match="timesteps"):
        load_reference_dm(CKPT, cfg)


def test_mismatched_config_and_bad_files(tmp_path):
    def extra(sd):
        sd["denoise_fn.something_new.weight"] = torch.zeros(2)

    with pytest.raises(UserError, match="something_new"):
        load_reference_dm(_modified_checkpoint(tmp_path, extra), CONFIG)
    cfg = json.loads(CONFIG.read_text())
    cfg["unet3d"]["dim_mults"] = [1, 2]
    with pytest.raises(UserError, match="missing|unexpected|shape"):
        load_reference_dm(CKPT, cfg)
    other = tmp_path / "other.pth"
    torch.save({"generator": {"w": torch.zeros(1)}}, str(other))
    with pytest.raises(UserError, match="does not look like"):
        load_reference_dm(other, CONFIG)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a loadable"):
        load_reference_dm(junk, CONFIG)
    with pytest.raises(UserError, match="not found"):
        load_reference_dm(tmp_path / "missing.pth", CONFIG)
    with pytest.raises(UserError, match="Did you mean 'mug'"):
        spec_from_reference_config("mugg")
    with pytest.raises(UserError, match="unet3d"):
        spec_from_reference_config({"gaussian_diffusion": {}})
    assert set(PRESETS) == {"mug", "mhad", "natops"}


def test_cli_convert_dm_and_load(lfdm, tmp_path):
    emb = tmp_path / "labels.safetensors"
    rows = torch.randn(3, 768, generator=torch.Generator().manual_seed(0))
    save_file({"anger": rows[0], "happiness": rows[1], "sadness": rows[2]}, str(emb))
    out = tmp_path / "model"
    res = lfdm("convert", "dm", CKPT, "--config", CONFIG, "-o", out, "--conditions", "happiness,anger",
               "--embeddings", emb, "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["conditions"] == ["happiness", "anger"] and summary["parts"] == ["dm"]

    model = load_dm(out)
    ref = load_reference_dm(CKPT, CONFIG)
    assert model.conditions.names == ["happiness", "anger"]
    assert torch.equal(model.conditions.rows[0], rows[1])
    for k, v in ref.unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[k], v), k
    cond, null = model.embed(["anger", "None"])
    assert null.tolist() == [False, True] and torch.equal(cond[0], rows[0])

    # Refuses to overwrite; --merge adds the DM beside another part.
    res = lfdm("convert", "dm", CKPT, "--config", CONFIG, "-o", out)
    assert res.returncode == 2 and "already exists" in res.stderr
    other = tmp_path / "with_lfae"
    save_model_folder(other, {"resolution": 64}, {"lfae": {"w": torch.ones(2)}})
    res = lfdm("convert", "dm", CKPT, "--config", CONFIG, "-o", other, "--merge")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in other.glob("*.safetensors")) == ["dm.safetensors", "lfae.safetensors"]
    assert torch.equal(load_file(str(other / "lfae.safetensors"))["w"], torch.ones(2))
    assert load_dm(other).conditions.names == []
    res = lfdm("convert", "dm", CKPT, "--config", CONFIG, "-o", other, "--merge")
    assert res.returncode == 2 and "already holds" in res.stderr

    # Naming conditions without embeddings needs BERT, which is not available here.
    res = lfdm("convert", "dm", CKPT, "--config", CONFIG, "-o", tmp_path / "m2", "--conditions", "anger",
               "--bert-dir", tmp_path / "nothing")
    assert res.returncode == 2 and "--embeddings" in res.stderr
