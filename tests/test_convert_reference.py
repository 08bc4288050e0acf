"""`lfdm convert reference`: a model folder from the authors' checkpoints that samples as they do.

Uses the small reference checkpoints in fixtures/reference_parity (the authors' code with a reduced
configuration) and the outputs their code produced on fixed inputs.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lfdm_cli.data.importers.mug import CLASSES as MUG
from lfdm_cli.diffusion.model import flow_from_volume
from lfdm_cli.pipeline import GenerationPipeline, SamplingSettings
from model_factory import run_main, write_test_image

FIXTURES = Path(__file__).parent / "fixtures" / "reference_parity"
ARGS = ("--lfae", FIXTURES / "lfae_checkpoint.pth", "--lfae-config", FIXTURES / "lfae_config.yaml",
        "--dm", FIXTURES / "dm_checkpoint.pth", "--dm-config", FIXTURES / "dm_config.json", "--dataset", "mug")


@pytest.fixture(scope="module")
def io():
    return load_file(str(FIXTURES / "dm_io.safetensors"))


@pytest.fixture(scope="module")
def embeddings(io, tmp_path_factory):
    """Stand-in class embeddings; 'anger' and 'disgust' get the two vectors the authors' sampler
    was run with, so the converted model can be checked against its output."""
    rows = {name: io["train/label_embeddings"][i].tolist() for i, name in enumerate(MUG)}
    rows["anger"], rows["disgust"] = io["unet/in_cond"][0].tolist(), io["unet/in_cond"][1].tolist()
    path = tmp_path_factory.mktemp("emb") / "mug.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="module")
def folder(embeddings, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "mug"
    assert run_main("convert", "reference", *ARGS, "--embeddings", embeddings, "-o", out) == 0
    return out


def test_folder_is_complete(folder):
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    assert meta["resolution"] == 64 and meta["dm"]["conditions"] == MUG and meta["dm"]["encoder"] == "bert"
    assert meta["generation"] == {"sampler": "ddim", "ddim_spacing": "reference", "eta": 1.0, "guidance": 1.0}
    assert meta["provenance"]["dataset"] == "mug"
    assert {p.name for p in folder.iterdir()} == {"model.yaml", "lfae.safetensors", "dm.safetensors"}
    pipe = GenerationPipeline.from_folder(folder)
    assert pipe.conditions == MUG and pipe.default_frames == 10
    assert pipe.default_settings() == SamplingSettings("ddim", 10, 1.0, 1.0, "reference")


def test_reference_ddim_samples_what_the_authors_code_samples(folder, io):
    """GaussianDiffusion(sampling_timesteps=3, ddim_sampling_eta=1).sample(fea, cond) after
    torch.manual_seed(3104), reproduced through the converted folder and the pipeline."""
    pipe = GenerationPipeline.from_folder(folder)
    torch.manual_seed(3104)
    with torch.inference_mode():
        flow, occ = pipe.sample_motion(io["unet/in_fea"], ["anger", "disgust"], frames=10,
                                       settings=SamplingSettings("ddim", 3, 1.0, 1.0, "reference"))
    ref_flow, ref_occ = flow_from_volume(io["unet_ddim/out"])
    assert (flow - ref_flow).abs().max() < 4e-4 and (occ - ref_occ).abs().max() < 4e-4


def test_generate_from_the_converted_folder(folder, tmp_path, capsys):
    img = write_test_image(tmp_path / "face.png")
    out = tmp_path / "anger.mp4"
    assert run_main("generate", img, "-c", "anger", "--model", folder, "-o", out, "--steps", "2", "--quiet") == 0
    meta = json.loads((tmp_path / "anger.json").read_text())
    assert (meta["sampler"], meta["ddim_spacing"], meta["eta"], meta["frames"]) == ("ddim", "reference", 1.0, 10)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="BERT may be available here")
def test_without_bert_the_error_says_how_to_provide_embeddings(tmp_path, capsys):
    assert run_main("convert", "reference", *ARGS, "-o", tmp_path / "m") == 2
    text = capsys.readouterr().err
    assert "--embeddings FILE" in text and "bert-base-cased" in text and "happiness" in text
    assert not (tmp_path / "m").exists()


def test_embeddings_must_cover_every_class(tmp_path, capsys):
    partial = tmp_path / "e.json"
    partial.write_text(json.dumps({"anger": [0.0] * 768}))
    assert run_main("convert", "reference", *ARGS, "--embeddings", partial, "-o", tmp_path / "m") == 2
    assert "no embedding for: disgust" in capsys.readouterr().err


def test_paper_preset_does_not_fit_the_small_checkpoint(embeddings, tmp_path, capsys):
    args = list(ARGS)
    i = args.index("--dm-config")
    del args[i:i + 2]
    assert run_main("convert", "reference", *args, "--embeddings", embeddings, "-o", tmp_path / "m") == 2
    assert "do not fit" in capsys.readouterr().err
