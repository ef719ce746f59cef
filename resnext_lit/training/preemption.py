"""Preemption: SIGTERM or SIGUSR1 saves `last.ckpt` at a step boundary and stops the run.

    python -m resnext_lit fit --config configs/demo.yaml    # on by default (builtins.preemption)
    kill -USR1 <pid>        # or -TERM: saves last.ckpt mid-epoch, exits with 128 + the signal
    python -m resnext_lit fit --config configs/demo.yaml --ckpt_path last   # continues it exactly

`Preemption` (a callback) finishes the current step on SIGTERM or SIGUSR1 (SLURM's warning,
`#SBATCH --signal=USR1@90`), writes the run's `checkpoints/last.ckpt`
(`resnext_lit.training.checkpoints.save_last`) and stops with `Preempted`, which the CLI turns
into exit status 128 + the signal. Near an epoch end it lets the validation finish and stops at
the epoch boundary instead. Under SLURM with auto-requeue (Lightning's `SLURMEnvironment`, the
default) SIGUSR1 also requeues the job, and the requeued job resumes by itself
(`resnext_lit.training.resume`); rank 0 requeues last, once the record and the W&B run are
closed (the requeue's SIGTERM reaches every process of the step). Once saved, a process ignores
further SIGTERM/SIGUSR1 until it exits, so it still ends with the first signal's status.

It takes the signals over from Lightning, which would save `hpc_ckpt_N.ckpt` from inside the
signal handler (a state possibly halfway through a step) and abort a running validation on
SIGTERM.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..errors import UserError
from .checkpoints import save_last
from .resume import next_epoch
from .run import RUN_ID_ENV

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# How often, under DDP, the ranks agree on whether a signal arrived (one sync, one collective).
PREEMPTION_CHECK_EVERY_N_STEPS = 10


class Preempted(SIGTERMException):
    """The run stopped on a signal after saving; exit status 128 + the signal, like a shell's.
    `requeue`: the SLURM job is to be requeued, which the CLI does last (`slurm_requeue`): the
    requeue's SIGTERM reaches every process of the job step, W&B's service process too, so the
    record and the W&B run are closed before it."""

    def __init__(self, signum: int, message: str, requeue: bool = False):
        super().__init__(128 + signum)
        self.message, self.requeue = message, requeue


# -- preemption ----------------------------------------------------------------------------
class Preemption(Callback):
    """Stop cleanly on SIGTERM / SIGUSR1 with `last.ckpt` saved at a step boundary (see above).

    Args:
        check_every_n_steps: under DDP, how often the ranks agree on whether a signal arrived
            (one all-reduce and one sync): the run stops at most this many steps after the
            signal, and at the latest at the epoch's end. One process checks every step (free).
    """

    def __init__(self, check_every_n_steps: int = PREEMPTION_CHECK_EVERY_N_STEPS):
        if check_every_n_steps < 1:
            raise UserError(f"Preemption: check_every_n_steps must be >= 1, got "
                            f"{check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self.every_s: float | None = None  # `save_every`
        self._due_at = math.inf  # when (time.monotonic) the next timed last.ckpt is due
        self._signal: int | None = None
        self._previous: dict[int, object] = {}
        self._trainer = None
        self._signal_at_epoch_end = 0  # the signal, once it arrived in an epoch's last step
        self._saved: Path | None = None
        self._stopped = False  # saved and on the way out: further stop signals are ignored

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer, self._signal, self._signal_at_epoch_end = trainer, None, 0
        self._stopped = False
        # Installed before Lightning's signal connector runs: it then leaves SIGUSR1 to us
        # (it only adds its SLURM handler where none exists).
        self._install(trainer, keep_previous=True)
        if trainer.world_size > 1:
            # Lightning 2.6.6 broadcasts its own SIGTERM flag from rank 0 at every training step
            # under DDP (a host->device copy, a collective and a device->host read). Our handler
            # replaces the one that sets that flag, so the broadcast only costs; the ranks agree
            # here instead, every `check_every_n_steps`. (Private, checked against lightning
            # 2.6.6; tests/test_internals.py fails if it changes.)
            trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = _no_broadcast

    def save_every(self, minutes: float | None) -> None:
        """Also write `last.ckpt` every `minutes` of training, mid-epoch (`--checkpoint_every_
        minutes`): a hard kill (SIGKILL, the OOM killer, a lost node), which no handler sees,
        then loses at most that much. Rank 0's clock decides; under DDP the ranks learn it at
        the steps where they agree on signals, so it costs no sync of its own."""
        if minutes is not None and not minutes > 0:
            raise UserError(f"--checkpoint_every_minutes must be > 0, got {minutes}")
        self.every_s = None if minutes is None else 60.0 * minutes

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning's SIGTERM handler (wrapped around ours) would abort a running validation.
        self._install(trainer, keep_previous=False)
        self._restart_clock()

    def _restart_clock(self) -> None:
        self._due_at = math.inf if self.every_s is None else time.monotonic() + self.every_s

    def _install(self, trainer, keep_previous: bool) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signals = set(SIGNALS)
        env = _cluster_environment(trainer)
        if isinstance(env, SLURMEnvironment) and env.requeue_signal is not None:
            signals.add(env.requeue_signal)
        for signum in signals:
            previous = signal.signal(signum, self._handle)
            if keep_previous:
                self._previous[signum] = previous

    def _handle(self, signum: int, frame) -> None:
        if self._stopped:  # Lightning's teardown may put this handler back after the stop
            return
        if self._trainer is None:  # after fit: act as the handler we replaced would
            previous = self._previous.get(signum, signal.SIG_DFL)
            signal.signal(signum, previous)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signum)
            return
        if self._signal is None:  # no printing here: a signal may interrupt a print
            self._signal = signum
            launcher = self._trainer.strategy.launcher
            if launcher is not None:  # DDP ranks Lightning started as our child processes
                launcher.kill(signum)

    def _agreed(self, trainer, batch_idx: int) -> tuple[int, bool]:
        """(the signal any rank received, whether a timed save is due by rank 0's clock): every
        step on one process; under DDP every `check_every_n_steps` steps and at each epoch's
        last, where the ranks agree (every rank must stop or save at the same step)."""
        due = self._due_at <= time.monotonic() if trainer.is_global_zero else False
        if trainer.world_size == 1:
            return self._signal or 0, due
        last = batch_idx + 1 >= trainer.num_training_batches
        if not last and trainer.global_step % self.check_every_n_steps:
            return 0, False
        mine = torch.tensor([self._signal or 0, int(due)], device=trainer.strategy.root_device)
        signum, due = _all_reduce(mine, dist.ReduceOp.MAX).tolist()
        return int(signum), bool(due)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        signum, due = self._agreed(trainer, batch_idx)
        if self._signal_at_epoch_end:
            return
        epoch_end = next_epoch(trainer) > trainer.current_epoch
        if signum and epoch_end:
            # The epoch's last step: let it validate and close (its record, its checkpoint).
            self._signal_at_epoch_end, self._saved = signum, None
        elif signum:
            self._stop(trainer, signum, save_last(trainer))
        elif due and not epoch_end:  # the epoch's end writes last.ckpt anyway
            save_last(trainer)
            self._restart_clock()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._signal_at_epoch_end and self._saved is None:
            self._saved = save_last(trainer)
        self._restart_clock()  # ModelCheckpoint writes last.ckpt at every epoch's end

    # Saved where ModelCheckpoint saves at an epoch end (Lightning resumes from those states;
    # from one saved in on_train_epoch_start it would skip the epoch), stopped at the next start.
    def on_validation_end(self, trainer, pl_module) -> None:
        if self._signal_at_epoch_end and not trainer.sanity_checking:
            self._saved = save_last(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._signal_at_epoch_end:
            self._stop(trainer, self._signal_at_epoch_end, self._saved)

    def _stop(self, trainer, signum: int, path: Path):
        name = signal.Signals(signum).name
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        env = _cluster_environment(trainer)
        requeue = (isinstance(env, SLURMEnvironment) and env.auto_requeue
                   and signum == env.requeue_signal)
        if requeue:
            then = "" if trainer.is_global_zero else "; requeued by rank 0"  # rank 0: see CLI
        else:
            then = f"; resume with the same command plus --run_id {os.environ.get(RUN_ID_ENV)}"
            if isinstance(env, SLURMEnvironment):  # e.g. `scontrol requeue`'s SIGTERM
                then += " (a requeued SLURM job does so by itself)"
        # Saved and on the way out: a later SIGTERM (SLURM's, after the requeue; a second kill)
        # must not cut the exit short: the record, the W&B run and the exit status are due.
        # Lightning's signal connector, torn down after this, puts back the handlers it found
        # (ours): `_handle` then ignores them too, and so does `teardown`.
        for stop_signal in SIGNALS:
            signal.signal(stop_signal, signal.SIG_IGN)
        self._trainer, self._stopped = None, True
        raise Preempted(signum, f"stopped by {name} at {where}: saved {path}{then}",
                        requeue=requeue and trainer.is_global_zero)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._trainer = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._trainer = None
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle and previous is not None:
                signal.signal(signum, signal.SIG_IGN if self._stopped else previous)


def _all_reduce(tensor: torch.Tensor, op) -> torch.Tensor:
    """One all-reduce over every rank, in place (Lightning's `strategy.reduce` adds a barrier)."""
    dist.all_reduce(tensor, op=op)
    return tensor


def _no_broadcast() -> None:
    """Stands in for Lightning's per-step SIGTERM broadcast (see `Preemption.setup`)."""


def _cluster_environment(trainer):
    # The environment Lightning chose (as its own signal connector reads it), SLURM's or another;
    # public only on multi-device strategies. Private, checked against lightning 2.6.6
    # (tests/test_internals.py).
    return getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)


def slurm_requeue() -> str:
    """`scontrol requeue <this job>` (as Lightning's SLURM handler does, never through a shell);
    what happened, for the stop line."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array
           else os.environ.get("SLURM_JOB_ID"))
    if not job or not re.fullmatch(r"[0-9_]+", job):
        return f"not requeued (SLURM job id {job!r})"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"requeue of SLURM job {job} failed ({err})"
    if done.returncode:
        return f"requeue of SLURM job {job} failed: {(done.stderr or done.stdout).strip()[:120]}"
    return f"requeued SLURM job {job}; it resumes from there"
