"""Loader worker processes: how many this machine can run, and how they meet a stop signal.

    from resnext_lit.data.workers import clip_workers, shield_from_stop_signals
    self.num_workers = clip_workers(num_workers)   # warns and caps above the usable cores
    DataLoader(..., worker_init_fn=shield_from_stop_signals)

Every DataModule caps its `num_workers` here: more workers than cores only oversubscribe them,
and FFCV raises above numba's thread limit (the core count by default). SLURM's
`scontrol requeue` (and a preempting scheduler) sends SIGTERM to every process of the job step,
loader workers included: a worker that dies of it fails the run ("DataLoader worker ... is
killed by signal: Terminated") before the trainer can save at the signal. Workers ignore
SIGTERM and SIGUSR1; the trainer (`resnext_lit.training.preemption`) saves, stops, and shuts
its workers down itself.
"""

from __future__ import annotations

import os
import signal
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


def shield_from_stop_signals(worker_id: int) -> None:
    """`worker_init_fn`: a loader worker ignores the stop signals its trainer handles."""
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
