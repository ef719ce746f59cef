"""One training order per (seed, epoch), whatever the number of processes.

    from resnext_lit.data.order import rank_order, GlobalOrderSampler
    rank_order(seed=0, epoch=3, num_items=1_281_167, per_rank=32, rank=1, world=8)
    DataLoader(train_set, batch_size=32, sampler=GlobalOrderSampler(train_set, 8, 1, 32, seed=0))

Epoch e trains one permutation of the training set, drawn from (seed, e) alone. Step s of the
epoch takes its images [s*B, (s+1)*B), with B the global micro-batch (per-device batch x
processes), and rank r takes the r-th contiguous part of them. So the images of a step, and of
what is left of an epoch after any step, are the same on 1, 8 or 64 processes: a run saved
mid-epoch on one world size resumes exactly on another with the same global batch (Mosaic's
streaming loader calls this elastic determinism). An epoch is the N // B full steps; the last
N % B images of its permutation wait for another epoch (drop_last, as the paper's recipes).

FFCV's own `distributed=True` and torch's `DistributedSampler` deal every W-th image of a
permutation that depends on nothing but the seed and epoch too, but a step of one process then
holds other images than a step of two.
"""

from __future__ import annotations

import os

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import UserError
from .distributed import rank_and_world


def run_seed() -> int:
    """The run's seed: `seed_everything`'s, which Lightning keeps in PL_GLOBAL_SEED for every
    process of the run (DDP ranks included); 0 without one."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def epoch_permutation(seed: int, epoch: int, num_items: int) -> np.ndarray:
    """The order of epoch `epoch`: a permutation of range(num_items) from (seed, epoch) only."""
    generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    return generator.permutation(num_items)


def rank_order(seed: int, epoch: int, num_items: int, per_rank: int, rank: int,
               world: int) -> np.ndarray:
    """The indices rank `rank` of `world` trains in epoch `epoch`, `per_rank` a step: step s
    is images [s*B, (s+1)*B) of the epoch's permutation, B = per_rank x world, of which this
    rank takes [r*per_rank, (r+1)*per_rank)."""
    global_batch = per_rank * world
    steps = num_items // global_batch
    if steps == 0:
        raise UserError(f"{num_items} training images hold no full global batch of "
                        f"{global_batch} ({world} process(es) x {per_rank})")
    permutation = epoch_permutation(seed, epoch, num_items)[:steps * global_batch]
    return permutation.reshape(steps, world, per_rank)[:, rank].reshape(-1)


class GlobalOrderSampler(DistributedSampler):
    """This rank's part of each epoch's `rank_order`, for a torch DataLoader of batch size
    `per_rank` (drop_last). A DistributedSampler, so Lightning keeps it under DDP instead of
    putting its own in, and calls `set_epoch` at every epoch start."""

    def __init__(self, dataset, num_replicas: int, rank: int, per_rank: int, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.per_rank = per_rank
        self.num_samples = len(dataset) // (per_rank * num_replicas) * per_rank

    def __iter__(self):
        return iter(rank_order(self.seed, self.epoch, len(self.dataset), self.per_rank,
                               self.rank, self.num_replicas).tolist())

    def __len__(self) -> int:
        return self.num_samples


def train_loader(dataset, per_rank: int, trainer, **kwargs) -> DataLoader:
    """A training DataLoader of `per_rank` images a step in the global order (drop_last),
    seeded by the run's seed; `kwargs` as DataLoader's (workers, pin_memory, ...)."""
    rank, world = rank_and_world(trainer)
    sampler = GlobalOrderSampler(dataset, world, rank, per_rank, seed=run_seed())
    return DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=True, **kwargs)
