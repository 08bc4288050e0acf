"""The generic training loop: exact resume, NaN stop, Ctrl-C, checkpoint retention, data order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lfdm_cli.errors import RunFailure, UserError
from lfdm_cli.training import EpochSampler, LoopSettings, Trainer, list_checkpoints
from lfdm_cli.training.checkpoint import capture_rng_state, restore_rng_state

sys.path.insert(0, os.path.dirname(__file__))
from tiny_training_task import TinyTask  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def train(run_dir, max_steps, resume=False, **task_kwargs):
    settings_keys = {"checkpoint_every", "keep_checkpoints"}
    settings = {k: task_kwargs.pop(k) for k in list(task_kwargs) if k in settings_keys}
    task = TinyTask(**task_kwargs)
    cfg = LoopSettings(run_dir=Path(run_dir), max_steps=max_steps, resume=resume, device="cpu", log_every=1,
                       recipe={"batch": task.global_batch}, show_progress=False, **settings)
    return Trainer(task, cfg).run()


def tensors(run_dir, step, part):
    return load_file(str(Path(run_dir) / "checkpoints" / f"step_{step:07d}" / f"{part}.safetensors"))


def log_lines(run_dir):
    out = []
    for line in (Path(run_dir) / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if k not in ("time", "steps_per_s", "samples_per_s")})
    return out


def test_resume_continues_exactly(tmp_path):
    # 24 items, batch 4: 6 steps per epoch, so 5 + 5 steps crosses an epoch boundary; dropout uses
    # the global torch RNG; the EMA is checkpointed beside the weights.
    full, split = tmp_path / "full", tmp_path / "split"
    train(full, 10, dropout=0.3)
    first = train(split, 5, dropout=0.3)
    assert first.step == 5 and list_checkpoints(split)[-1][0] == 5
    second = train(split, 10, resume=True, dropout=0.3)
    assert second.step == 10
    for part in ("model", "ema", "optimizer"):
        a, b = tensors(full, 10, part), tensors(split, 10, part)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{part}:{key} differs after resume"
    assert log_lines(full) == log_lines(split)
    state = json.loads((split / "checkpoints" / "step_0000010" / "state.json").read_text())
    assert state["epoch"] == 1 and state["epoch_step"] == 4 and state["steps_per_epoch"] == 6
    assert state["optimizer"]["param_names"][0] == "0.weight"
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}


def test_lr_follows_epoch_milestones(tmp_path):
    train(tmp_path / "run", 30)  # milestones at epochs 2 and 4, 6 steps per epoch
    lrs = {rec["step"]: rec["lr"] for rec in log_lines(tmp_path / "run")}
    assert lrs[12] == pytest.approx(1e-2) and lrs[13] == pytest.approx(1e-3)
    assert lrs[25] == pytest.approx(1e-4)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RunFailure) as info:
        train(run, 10, nan_at=4, checkpoint_every=2)  # step index 4 is the 5th step
    message = str(info.value)
    assert "NaN or infinite at step 5" in message and "step_0000004" in message
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    assert all(torch.isfinite(t).all() for t in tensors(run, 4, "model").values())
    assert max(rec["step"] for rec in log_lines(run)) == 4
    # The good checkpoint resumes (the NaN was injected at one step only).
    result = train(run, 6, resume=True, checkpoint_every=2)
    assert result.step == 6


def test_keeps_only_the_newest_checkpoints(tmp_path):
    train(tmp_path / "run", 5, checkpoint_every=1, keep_checkpoints=2)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [4, 5]
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_refuses_to_mix_runs(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError, match="no checkpoint to resume"):
        train(run, 2, resume=True)
    train(run, 2)
    with pytest.raises(UserError, match="already holds a training run"):
        train(run, 4)
    with pytest.raises(UserError, match="recipe differs"):
        train(run, 4, resume=True, batch=8)


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "tiny_training_task.py"), str(run),
                             "--max-steps", "100000", "--sleep", "0.05"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "log.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "SIGINT received" in stderr
    saved = list_checkpoints(run)
    assert len(saved) == 1
    step = saved[0][0]
    assert step >= 3
    assert max(rec["step"] for rec in log_lines(run)) == step
    assert train(run, step + 2, resume=True).step == step + 2


def test_sampler_is_a_function_of_seed_and_step():
    one = EpochSampler(num_items=24, global_batch=4, seed=7)
    halves = [EpochSampler(24, 4, 7, rank=r, world_size=2) for r in range(2)]
    it1 = one.batches(start_step=3)
    its = [h.batches(start_step=3) for h in halves]
    for step in range(3, 15):
        whole = next(it1)
        assert whole == next(its[0]) + next(its[1])
        assert whole == one.global_batch_keys(step)
    epoch0 = [k[2] for s in range(6) for k in one.global_batch_keys(s)]
    epoch1 = [k[2] for s in range(6, 12) for k in one.global_batch_keys(s)]
    assert sorted(epoch0) == list(range(24)) and epoch0 != epoch1
    assert EpochSampler(24, 4, 8).global_batch_keys(0) != one.global_batch_keys(0)
    with pytest.raises(UserError, match="cannot be split evenly"):
        EpochSampler(24, 5, 0, world_size=2)
    with pytest.raises(UserError, match="only 3 samples"):
        EpochSampler(3, 4, 0)


def test_rng_state_round_trip():
    import random

    state = capture_rng_state()
    json.dumps(state)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
