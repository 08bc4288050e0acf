"""Training machinery shared by both stages (see loop.py for the run folder and guarantees)."""

from lfdm_cli.training.checkpoint import Checkpoint, latest_checkpoint, list_checkpoints, load_checkpoint
from lfdm_cli.training.distributed import DistributedContext, setup_distributed
from lfdm_cli.training.ema import EMA
from lfdm_cli.training.loop import (
    LoopSettings,
    StepContext,
    StepOutput,
    Trainer,
    TrainingInterrupted,
    TrainingTask,
    TrainResult,
    multistep_lr_factor,
    read_run_record,
    resume_metadata,
)
from lfdm_cli.training.sampler import EpochDataset, EpochSampler

__all__ = [
    "Checkpoint", "DistributedContext", "EMA", "EpochDataset", "EpochSampler", "LoopSettings",
    "StepContext", "StepOutput", "TrainResult", "Trainer", "TrainingInterrupted", "TrainingTask",
    "latest_checkpoint", "list_checkpoints", "load_checkpoint", "multistep_lr_factor",
    "read_run_record", "resume_metadata", "setup_distributed",
]
