"""Reduced-precision generation (`--precision bf16`) on the CPU: float32 outputs close to fp32, recorded
in the sidecar, and clear errors for what the device cannot do."""

import json

import pytest
import torch

from lfdm_cli.diffusion.guidance import GuidedDenoiser
from lfdm_cli.pipeline import GenerationPipeline
from model_factory import build_tiny_model_folder, run_main, write_test_image

bf16_cpu = pytest.mark.skipif(not hasattr(torch.backends, "mkldnn") or not torch.backends.mkldnn.is_available(),
                              reason="bf16 CPU kernels need oneDNN")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("models") / "tiny")


@bf16_cpu
def test_bf16_pipeline_close_to_fp32_and_deterministic(model):
    results = {}
    for precision in ("fp32", "bf16", "bf16"):
        pipe = GenerationPipeline.from_folder(model, precision=precision)
        images = torch.rand(2, 3, pipe.resolution, pipe.resolution, generator=torch.Generator().manual_seed(0))
        r = pipe.generate(images, [pipe.conditions[0], pipe.conditions[1]], seeds=[0, 1], steps=3)
        assert r.videos.dtype == torch.float32 and r.flows.dtype == torch.float32
        results.setdefault(precision, []).append(r)
    fp32, (bf16, again) = results["fp32"][0], results["bf16"]
    assert torch.equal(bf16.videos, again.videos)  # seeded bf16 is deterministic too
    diff = (fp32.videos - bf16.videos).abs()
    # bf16 keeps 8 bits of mantissa: frames differ by rounding, not by content (a random tiny model
    # amplifies rounding more than a trained one: a few pixels differ a lot, the frames little).
    assert 0 < diff.mean().item() < 0.03 and torch.quantile(diff.flatten(), 0.99).item() < 0.2


def test_denoiser_answers_in_the_samplers_dtype():
    class HalfNet:
        def project_latent(self, fea):
            return fea

        def __call__(self, x, t, cond=None, null_mask=None, *, latent=None):
            return (x * 0.5).to(torch.bfloat16)

    den = GuidedDenoiser(HalfNet(), torch.zeros(1, 1, 2, 2), None)
    assert den(torch.ones(1, 3, 2, 2, 2), torch.tensor([3])).dtype == torch.float32


def test_generate_precision_errors_and_sidecar(model, tmp_path, capsys):
    image = write_test_image(tmp_path / "face.png")
    code = run_main("generate", image, "-c", "happiness", "--model", model, "--device", "cpu", "--quiet",
                    "--precision", "fp16", "-o", tmp_path / "a.mp4")
    assert code == 2 and "fp16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "a.mp4").exists()
    code = run_main("generate", image, "-c", "happiness", "--model", model, "--device", "cpu", "--quiet",
                    "--precision", "fp8", "-o", tmp_path / "a.mp4")
    assert code == 2 and "fp8" in capsys.readouterr().err
    if torch.backends.mkldnn.is_available():
        assert run_main("generate", image, "-c", "happiness", "--model", model, "--device", "cpu", "--quiet",
                        "--steps", "2", "--precision", "bf16", "-o", tmp_path / "b.mp4") == 0
        assert json.loads((tmp_path / "b.json").read_text())["precision"] == "bf16"


def test_compile_flag_compiles_the_unet_only(model, tmp_path, monkeypatch):
    from lfdm_cli.diffusion.unet3d import UNet3D

    compiled = []

    def fake_compile(module, *args, **kwargs):
        compiled.append(type(module))
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    image = write_test_image(tmp_path / "face.png")
    assert run_main("generate", image, "-c", "happiness", "--model", model, "--device", "cpu", "--quiet",
                    "--steps", "2", "--compile", "-o", tmp_path / "c.mp4") == 0
    assert compiled == [UNet3D]
    assert json.loads((tmp_path / "c.json").read_text())["compiled"] is True


@pytest.mark.slow
def test_compiled_unet_generates_what_eager_does(model):
    eager = GenerationPipeline.from_folder(model)
    fast = GenerationPipeline.from_folder(model, compile=True)
    images = torch.rand(1, 3, eager.resolution, eager.resolution, generator=torch.Generator().manual_seed(0))
    a = eager.generate(images, [eager.conditions[0]], seeds=[0], steps=3)
    b = fast.generate(images, [eager.conditions[0]], seeds=[0], steps=3)
    assert (a.videos - b.videos).abs().max().item() < 1e-4
