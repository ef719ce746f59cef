"""Fault tolerance for `fit`: preemption, exact resume, atomic checkpoints.

    python -m resnext_lit fit --config configs/demo.yaml            # all of it is on by default
    kill -USR1 <pid>        # or -TERM: saves last.ckpt mid-epoch, exits with 128 + the signal
    python -m resnext_lit fit --config configs/demo.yaml --ckpt_path last   # continues it exactly

- `Preemption` (a callback): SIGTERM or SIGUSR1 (SLURM's warning, `#SBATCH --signal=USR1@90`)
  finishes the current step, writes the run's `checkpoints/last.ckpt` and stops. Near an epoch
  end it lets the validation finish and stops at the epoch boundary instead. Under SLURM with
  auto-requeue (Lightning's `SLURMEnvironment`, the default) SIGUSR1 also requeues the job, and
  the requeued job resumes by itself (`requeued_version`). It takes the signals over from
  Lightning, which would save `hpc_ckpt_N.ckpt` from inside the signal handler (a state possibly
  halfway through a step) and abort a running validation on SIGTERM.
- `ExactResume` (a callback): epoch e's data order and augmentations come from (seed, e, rank),
  and a run resumed mid-epoch skips the batches it already trained on, so the resumed run sees
  the batches the uninterrupted run would have (bit-exact on CPU with torch DataLoaders).
- Checkpoints are written atomically and never with NaN weights (`resnext_lit.checkpoints`,
  installed by `Preemption`).
- Non-finite losses and weights: `resnext_lit.nonfinite`.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from .checkpoints import AtomicCheckpointIO, last_checkpoint_path
from .errors import UserError

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# How often, under DDP, the ranks agree on whether a signal arrived (one sync, one collective).
PREEMPTION_CHECK_EVERY_N_STEPS = 10


class Preempted(SIGTERMException):
    """The run stopped on a signal after saving; exit status 128 + the signal, like a shell's."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.message = message


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
        self._signal: int | None = None
        self._previous: dict[int, object] = {}
        self._trainer = None
        self._signal_at_epoch_end = 0  # the signal, once it arrived in an epoch's last step
        self._saved: Path | None = None
        self._stopping = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a user's own IO stays
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        self._trainer, self._signal, self._signal_at_epoch_end = trainer, None, 0
        self._stopping = False
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

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning's SIGTERM handler (wrapped around ours) would abort a running validation.
        self._install(trainer, keep_previous=False)

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
        if self._stopping:  # saved and on the way out: swallow one repeat (SLURM's SIGTERM
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # after a requeue)
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

    def _agreed_signal(self, trainer, batch_idx: int) -> int:
        """The signal any rank received (every rank must stop at the same step): every step on
        one process, every `check_every_n_steps` steps and at each epoch's last under DDP."""
        if trainer.world_size == 1:
            return self._signal or 0
        last = batch_idx + 1 >= trainer.num_training_batches
        if not last and trainer.global_step % self.check_every_n_steps:
            return 0
        mine = torch.tensor(self._signal or 0, device=trainer.strategy.root_device)
        return int(_all_reduce(mine, dist.ReduceOp.MAX))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        signum = self._agreed_signal(trainer, batch_idx)
        if not signum or self._signal_at_epoch_end:
            return
        if next_epoch(trainer) > trainer.current_epoch:
            # The epoch's last step: let it validate and close (its record, its checkpoint).
            self._signal_at_epoch_end, self._saved = signum, None
            return
        self._stop(trainer, signum, self._save(trainer))

    # Saved where ModelCheckpoint saves at an epoch end (Lightning resumes from those states;
    # from one saved in on_train_epoch_start it would skip the epoch), stopped at the next start.
    def on_validation_end(self, trainer, pl_module) -> None:
        if self._signal_at_epoch_end and not trainer.sanity_checking:
            self._saved = self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._signal_at_epoch_end and self._saved is None:
            self._saved = self._save(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._signal_at_epoch_end:
            self._stop(trainer, self._signal_at_epoch_end, self._saved)

    def _save(self, trainer) -> Path:
        path = last_checkpoint_path(trainer)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last:
                # Before saving, so the checkpoint says so: resumed, it then keeps writing
                # last.ckpt rather than last-v1.ckpt beside a file it does not know.
                callback.last_model_path = str(path)
        trainer.save_checkpoint(path, weights_only=False)  # every rank: it synchronises them
        return path

    def _stop(self, trainer, signum: int, path: Path):
        name = signal.Signals(signum).name
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        env = _cluster_environment(trainer)
        if isinstance(env, SLURMEnvironment) and env.auto_requeue and signum == env.requeue_signal:
            then = slurm_requeue() if trainer.is_global_zero else "requeued by rank 0"
        else:
            then = "resume with the same command plus --ckpt_path last"
        self._trainer, self._stopping = None, True
        raise Preempted(signum, f"stopped by {name} at {where}: saved {path}; {then}")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._trainer = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._trainer = None
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle and previous is not None:
                signal.signal(signum, previous)


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
    """`scontrol requeue <this job>` (as Lightning's SLURM handler does, never through a shell)."""
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


def requeued_version(root: Path) -> int | None:
    """The version folder under `root` that this requeued SLURM job wrote, if it left a last.ckpt.

    SLURM reruns a requeued job's script unchanged (same SLURM_JOB_ID, SLURM_RESTART_COUNT >= 1);
    results.json records the job id, so the rerun finds its run without `--ckpt_path last`.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not job or int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1:
        return None
    found = []
    for record in root.glob("version_*/results.json"):
        try:
            mine = json.loads(record.read_text()).get("slurm_job_id") == job
        except (OSError, ValueError):
            continue
        if mine and (record.parent / "checkpoints" / "last.ckpt").exists():
            found.append(int(record.parent.name.split("_")[1]))
    return max(found, default=None)


def _set_sampler_epoch(loader, epoch: int) -> None:
    """`set_epoch` on a loader's sampler and batch sampler (DistributedSampler reshuffles by it)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    for sampler in {id(s): s for s in (getattr(loader, "sampler", None), batch_sampler,
                                       getattr(batch_sampler, "sampler", None))}.values():
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)


def next_epoch(trainer) -> int:
    """The epoch of the next training batch, for a checkpoint saved now: the current one,
    unless its last batch is done (Lightning then resumes at the next epoch)."""
    loop = trainer.fit_loop
    if loop.epoch_progress.current.ready > loop.epoch_progress.current.started:
        return trainer.current_epoch  # in on_train_epoch_start: nothing of it has run
    done = loop.epoch_loop.batch_progress.current.ready >= trainer.num_training_batches
    return trainer.current_epoch + int(done)


# -- exact resume --------------------------------------------------------------------------
class ExactResume(Callback):
    """Make a resumed run see the data the uninterrupted one would have.

    - Seeds Python, NumPy and torch (all devices) from (seed, epoch, rank) before each epoch's
      data iterator exists, so data order and augmentations depend on the epoch, not on history.
      The seed is `seed_everything`'s (PL_GLOBAL_SEED), kept in the checkpoint; without one,
      nothing is reseeded. The rank keeps DDP ranks' augmentations apart.
    - Resuming mid-epoch, draws and drops the batches already trained: Lightning 2.6 restarts a
      plain DataLoader (or FFCV Loader) at its first batch and stops it early instead. Costs
      loading those batches (no compute). Loaders with their own state_dict are left to Lightning.
    """

    def __init__(self):
        self.seed: int | None = None
        self._seeded: int | None = None
        self._trainer = None

    # The first epoch's iterator is made before any epoch hook (in setup_data, which our module's
    # configure_optimizers already runs): seed before it, in setup or, resuming, in the restore.
    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer
        if stage == "fit" and os.environ.get("PL_GLOBAL_SEED") is not None:
            self.seed = int(os.environ["PL_GLOBAL_SEED"])
            self._reseed(trainer, 0)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": next_epoch(self._trainer)}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]  # the run's own, whatever seed this process was given
        self._reseed(self._trainer, state["epoch"])

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path is None:
            return  # a new run: its first iterator was made for epoch 0, as it should be
        # Resuming, the first iterator is stale: Lightning made it while `configure_optimizers`
        # read `estimated_stepping_batches`, before the loops were restored, so it was made
        # for epoch 0 (its order, its worker seeds, FFCV's resolution), and a DataLoader with
        # workers had already prefetched before any sampler's set_epoch. Make it again now.
        loop = trainer.fit_loop
        epoch = trainer.current_epoch  # restored by now: the epoch about to train
        done = loop.epoch_loop.batch_progress.current.ready  # as restored, before the loop resets
        if done >= trainer.num_training_batches:
            done = 0  # saved at the epoch's end: the next epoch starts from its first batch
        self._reseed(trainer, epoch)
        loaders = trainer.train_dataloader
        for loader in (loaders if isinstance(loaders, (list, tuple)) else [loaders]):
            _set_sampler_epoch(loader, epoch)  # as Lightning does at every epoch start
        # Lightning's fetcher and combined loader (private, checked against lightning 2.6.6;
        # tests/test_internals.py and the resume tests fail if they change): iter() makes the
        # loaders' iterators again; a sized loader's fetcher fetches nothing ahead.
        fetcher = loop._data_fetcher
        iter(fetcher)
        if not done:
            return
        stateful = all(hasattr(dl, "load_state_dict") for dl in loop._combined_loader.flattened)
        if stateful:
            return
        if getattr(fetcher, "batches", None) or fetcher.length is None:
            rank_zero_warn(f"resumed in the middle of epoch {epoch} without replaying its data "
                           "order (unsized loader)")
            return
        for _ in range(done):
            next(fetcher.iterator)
        # Lightning then warns that this loader cannot resume mid-epoch; it just did.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self._seeded:
            self._reseed(trainer, trainer.current_epoch)

    def _reseed(self, trainer, epoch: int) -> None:
        self._seeded = epoch
        if self.seed is None:
            return
        seed = int(np.random.SeedSequence([self.seed, epoch, trainer.global_rank])
                   .generate_state(1)[0])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
