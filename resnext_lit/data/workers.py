"""How many loader worker processes (or FFCV decoding threads) this machine can run.

    from resnext_lit.data.workers import clip_workers, usable_cores
    self.num_workers = clip_workers(num_workers)   # warns and caps above the usable cores

Every DataModule caps its `num_workers` here: more workers than cores only oversubscribe them,
and FFCV raises above numba's thread limit (the core count by default).
"""

from __future__ import annotations

import os
import warnings


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a cluster's cgroup narrows),
    not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def clip_workers(num_workers: int, limit: int | None = None, what: str = "data.num_workers") -> int:
    """`num_workers` capped at `limit` (default: the usable cores); warns when it clips."""
    limit = usable_cores() if limit is None else limit
    if num_workers > limit:
        warnings.warn(f"{what}={num_workers} is more than the {limit} usable cores; using {limit}",
                      stacklevel=3)
        return limit
    return num_workers
