"""A tiny training task for the generic loop's tests (and a script to run it in a subprocess).

    python tests/tiny_training_task.py RUN_DIR --max-steps N [--resume] [--sleep S] [--nan-at K]

exits like `lfdm train` does: 0, 1 (RunFailure), 2 (UserError) or 128+signal after an interrupt.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from torch import nn

from lfdm_cli.errors import LfdmError
from lfdm_cli.training import (
    EMA,
    LoopSettings,
    StepOutput,
    Trainer,
    TrainingInterrupted,
    TrainingTask,
    multistep_lr_factor,
)


class NoiseVideos:
    """`n` items per epoch; item i is a random 3x8x8 image whose target depends on i and the rng."""

    def __init__(self, n: int = 24):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get(self, index: int, rng: np.random.Generator) -> dict:
        x = rng.standard_normal((3, 8, 8)).astype(np.float32)
        y = np.float32(np.sin(index) + 0.5 * x[0].mean())
        return {"x": x, "y": y}


class TinyTask(TrainingTask):
    name = "tiny"

    def __init__(self, batch: int = 4, epochs: int = 100, dropout: float = 0.0, nan_at: int | None = None,
                 sleep: float = 0.0, ema: bool = True):
        self.dataset = NoiseVideos()
        self.global_batch = batch
        self.max_epochs = epochs
        self.nan_at = nan_at
        self.sleep = sleep
        self.dropout = dropout
        self.use_ema = ema

    def setup(self, device):
        self.model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                                   nn.Dropout(self.dropout), nn.Conv2d(6, 1, 1)).to(device)
        self.ema = EMA(self.model, decay=0.9) if self.use_ema else None

    def build_optimizer(self):
        return torch.optim.Adam(self.model.parameters(), lr=1e-2, betas=(0.5, 0.999))

    def lr_factor(self, epoch: int) -> float:
        return multistep_lr_factor(epoch, [2, 4])

    def training_step(self, module, batch, ctx):
        pred = module(batch["x"]).mean(dim=(1, 2, 3))
        # Noise drawn for the whole global batch and sliced: identical under any process count.
        noise = torch.randn(ctx.global_batch, generator=ctx.generator("noise"))[ctx.local_rows]
        mse = ((pred - batch["y"] - 0.01 * noise) ** 2).mean()
        if self.nan_at is not None and ctx.step == self.nan_at:
            mse = mse * float("nan")
        if self.sleep:
            time.sleep(self.sleep)
        return StepOutput({"mse": mse, "l1": 0.1 * (pred - batch["y"]).abs().mean()})

    def run_metadata(self) -> dict:
        return {"kind": "tiny"}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--nan-at", type=int, default=None)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--keep", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    task = TinyTask(batch=args.batch, dropout=args.dropout, nan_at=args.nan_at, sleep=args.sleep)
    settings = LoopSettings(run_dir=args.run_dir, max_steps=args.max_steps, resume=args.resume, device="cpu",
                            checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep, log_every=1,
                            workers=args.workers, recipe={"batch": args.batch}, show_progress=False)
    try:
        Trainer(task, settings).run()
    except TrainingInterrupted as exc:
        print(f"interrupted at step {exc.step}", file=sys.stderr)
        return exc.exit_code
    except LfdmError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
