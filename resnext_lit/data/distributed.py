"""Rank slicing for exact validation under DDP, for every DataModule: `rank_slice` and the
`ExactShardSampler` built on it (worker counts are `workers.py`'s).

    from resnext_lit.data.distributed import rank_slice
    rank_slice(50_000, rank=1, world_size=3)   # range(16666, 33333)

`DistributedSampler` (and FFCV's `distributed=True`) pad the last shard with duplicates so every
rank gets the same count; the duplicates then enter `val/top1_err`. Here each rank takes one
contiguous, unpadded slice instead: every image once, ranks differ by at most one image, and the
metric states (summed over ranks by torchmetrics) give the error of the whole split.
"""

from __future__ import annotations

import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ..errors import UserError


def rank_slice(num_items: int, rank: int, world_size: int) -> range:
    """The contiguous share of `num_items` for `rank`; the shares tile 0..num_items exactly."""
    if num_items < world_size:
        raise UserError(f"{num_items} validation images cannot be split over {world_size} "
                        "ranks with at least one each")
    return range(num_items * rank // world_size, num_items * (rank + 1) // world_size)


def rank_and_world(trainer=None) -> tuple[int, int]:
    """(global rank, world size) from the Trainer, else torch.distributed, else (0, 1)."""
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ExactShardSampler(DistributedSampler):
    """A `DistributedSampler` that yields this rank's `rank_slice` in order, without padding.

    Being a DistributedSampler, Lightning leaves it in place instead of injecting its own
    (documented: Trainer `use_distributed_sampler`, "if a distributed sampler was already added,
    Lightning will not replace the existing one")."""

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = rank_slice(len(dataset), rank, num_replicas)
        self.num_samples = len(self.indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
