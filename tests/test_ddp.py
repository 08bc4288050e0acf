"""Two processes on CPU (gloo), launched with torchrun's environment variables, train exactly as one
process with the same global batch; and a run resumes under a different number of processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from lfdm_cli.training import LoopSettings, Trainer

sys.path.insert(0, os.path.dirname(__file__))
from test_lfae_training import make_video_dataset  # noqa: E402
from tiny_training_task import TinyTask  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], world: int = 2, timeout: float = 300) -> None:
    """Start `world` ranks of `argv` as torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=REPO))
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))


def test_two_processes_equal_one_with_the_global_batch(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    task = TinyTask(batch=4)
    Trainer(task, LoopSettings(run_dir=single, max_steps=8, device="cpu", checkpoint_every=4,
                               recipe={"batch": 4}, show_progress=False, log_every=1)).run()
    launch([str(REPO / "tests" / "tiny_training_task.py"), str(multi), "--max-steps", "4",
            "--checkpoint-every", "4", "--batch", "4"])
    # BatchNorm statistics are synchronised across the processes, so the weights agree to rounding.
    a, b = weights(single, 4), weights(multi, 4)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=1e-5, rtol=1e-4, msg=key)
    record = json.loads((multi / "run.json").read_text())
    assert record["world_size"] == 2
    # Checkpoints hold unwrapped weights and the global step: one process continues the run.
    Trainer(TinyTask(batch=4), LoopSettings(run_dir=multi, max_steps=8, resume=True, device="cpu",
                                            checkpoint_every=4, recipe={"batch": 4},
                                            show_progress=False, log_every=1)).run()
    a, b = weights(single, 8), weights(multi, 8)
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=1e-5, rtol=1e-4, msg=key)


def test_lfae_training_under_two_processes(tmp_path):
    from lfdm_cli.config.recipe import load_recipe
    from lfdm_cli.lfae.model import LFAE
    from lfdm_cli.modelfolder import load_model_folder
    from lfdm_cli.training.lfae_trainer import train_lfae

    data = make_video_dataset(tmp_path / "data")
    single, multi = tmp_path / "single", tmp_path / "multi"
    train_lfae("tiny", data, single, device="cpu", max_steps=3, show_progress=False)
    launch(["-m", "lfdm_cli", "train", "lfae", "--recipe", "tiny", "--data", str(data), "--out", str(multi),
            "--device", "cpu", "--max-steps", "3", "--quiet"])
    logs = [[json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()] for run in (single, multi)]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2, 3]
    for one, two in zip(*logs):
        for term in ("loss", "perceptual", "equivariance_shift", "equivariance_affine"):
            assert abs(one[term] - two[term]) <= 1e-4 * abs(one[term]) + 1e-6, (term, one, two)
    # Compare the trained models as functions. Biases feeding a BatchNorm (and the region logits'
    # bias, cancelled by the spatial softmax) get exactly zero gradient, so Adam moves them by
    # amplified rounding noise that differs between the runs without changing any output.
    recipe = load_recipe("tiny")
    from lfdm_cli.data.dataset import Dataset

    videos = [Dataset.open(data).load(v, mmap=False) for v in Dataset.open(data).videos[:4]]
    frames = torch.from_numpy(np.stack([[v[0], v[-1]] for v in videos])).permute(1, 0, 4, 2, 3) / 255.0
    source, driving = frames[0].contiguous(), frames[1].contiguous()
    outputs = []
    for run in (single, multi):
        model = LFAE(recipe.lfae.model, 32)
        load_model_folder(run / "model").load_into("lfae", model)
        model.train()
        with torch.no_grad():
            outputs.append(model.reconstruct(source, driving))
    for key, atol in (("prediction", 2e-3), ("optical_flow", 2e-4), ("occlusion_map", 2e-4)):
        torch.testing.assert_close(outputs[0][key], outputs[1][key], atol=atol, rtol=0, msg=key)
