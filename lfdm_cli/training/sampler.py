"""Deterministic data order: every sample is a pure function of (seed, epoch, position).

Epoch e visits the items in the order of a permutation drawn from (seed, e); batch b of the epoch
is positions [b*B, (b+1)*B) of that order, with B the *global* batch. Under DDP each process takes
its contiguous share of every global batch. Each sample also gets its own random generator,
seeded by (seed, epoch, position), for frame choice and augmentation. Consequences:

- resuming at global step s continues at epoch s // steps_per_epoch, batch s % steps_per_epoch,
  with exactly the samples an uninterrupted run would have seen;
- the samples of a step do not depend on the number of processes or data-loader workers, so
  a run may be resumed with a different `--nproc_per_node`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch

from lfdm_cli.errors import UserError

# Salts keep the permutation stream and the per-sample streams independent of each other.
_ORDER_SALT = 0x0D0E
_ITEM_SALT = 0x17E5


class EpochDataset(Protocol):
    """What a stage hands to the loop: `len` items per epoch, each built from its own generator."""

    def __len__(self) -> int: ...

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]: ...


class EpochSampler:
    def __init__(self, num_items: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1):
        if global_batch % world_size != 0:
            raise UserError(
                f"The batch size {global_batch} cannot be split evenly over {world_size} processes.",
                hint="The recipe's batch size is the global batch; choose a multiple of --nproc_per_node.")
        if num_items < global_batch:
            raise UserError(
                f"An epoch has only {num_items} samples but the batch size is {global_batch}.",
                hint="Use more training videos, a larger num_repeats or a smaller batch_size.")
        self.num_items = num_items
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        # Incomplete last batches are dropped, as the reference's DataLoader(drop_last=True) does.
        self.steps_per_epoch = num_items // global_batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, _ORDER_SALT, epoch]).permutation(self.num_items)

    def global_batch_keys(self, step: int) -> list[tuple[int, int, int]]:
        """(epoch, position, item index) of every sample of global step `step`."""
        epoch, b = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        start = b * self.global_batch
        return [(epoch, p, int(order[p])) for p in range(start, start + self.global_batch)]

    def batches(self, start_step: int = 0) -> Iterator[list[tuple[int, int, int]]]:
        """This process's share of every global batch from `start_step` on (endless)."""
        step = start_step
        epoch = -1
        order = None
        while True:
            e, b = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, self.epoch_order(e)
            start = b * self.global_batch + self.rank * self.local_batch
            yield [(epoch, p, int(order[p])) for p in range(start, start + self.local_batch)]
            step += 1


class KeyedDataset(torch.utils.data.Dataset):
    """Adapts an EpochDataset to DataLoader keys (epoch, position, index) from EpochSampler."""

    def __init__(self, dataset: EpochDataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        epoch, position, index = key
        rng = np.random.default_rng([self.seed, _ITEM_SALT, epoch, position])
        return self.dataset.get(index, rng)
