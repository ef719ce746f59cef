"""Resume, in one place: which run a command continues, and that it continues it exactly.

    python -m resnext_lit fit --config configs/demo.yaml --ckpt_path last   # the newest run
    sbatch scripts/slurm_train.sbatch ...     # requeued, the job continues its own run

- Which run: `resume_last` turns `fit --ckpt_path last` into the newest run folder of the
  logger's name that holds a `last.ckpt`, so the run continues in its own folder (Lightning
  would start a new `version_N` and find nothing); `resume_requeued_slurm_job` sends a requeued
  SLURM job (same SLURM_JOB_ID, SLURM_RESTART_COUNT >= 1) back to the folder whose
  `results.json` records its job id (`requeued_version`). Both run in the CLI's
  `before_instantiate_classes`, before any folder is written.
- Exactly: `ExactResume` (a callback, `builtins.exact_resume`) seeds epoch e's data order and
  augmentations from (seed, e, rank), and a run resumed mid-epoch skips the batches it already
  trained on, so the resumed run sees the batches the uninterrupted run would have (bit-exact on
  CPU with torch DataLoaders).
- What else a checkpoint restores is its owner's: the record's epochs and wall time
  (`resnext_lit.training.record_writer`), FFCV's epoch order (`resnext_lit.data.ffcv` reads the
  Trainer's epoch), the lr schedule's step (Lightning).
"""

from __future__ import annotations

import json
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from ..errors import UserError
from .checkpoints import check_checkpoint


def _run_logger_args(config):
    """init_args of the logger that owns the run folder (the first, e.g. CSV before W&B), when
    the run's version is still to be chosen."""
    logger = config.trainer.get("logger")
    if isinstance(logger, list):  # e.g. CSV + W&B (configs/logger/wandb.yaml)
        logger = logger[0] if logger else None
    init = getattr(logger, "init_args", None)
    if init is None or init.get("version") is not None or "save_dir" not in init:
        return None
    return init


def _runs_of(init) -> Path:
    """The folder holding this run name's `version_N` folders, as Lightning's loggers name it."""
    return Path(init.save_dir) / (init.get("name") or "lightning_logs")


def resume_requeued_slurm_job(config) -> None:
    """A requeued SLURM job reruns its script unchanged: continue the run it had started."""
    init = _run_logger_args(config)
    if init is None:
        return
    root = _runs_of(init)
    version = requeued_version(root)
    if version is not None:
        print(f"SLURM job {os.environ['SLURM_JOB_ID']} restarted: resuming "
              f"{root}/version_{version}", file=sys.stderr)
        config.ckpt_path = "last"


def resume_last(config) -> None:
    """`fit --ckpt_path last` continues the newest run of this name in its own folder.

    Lightning looks for `last.ckpt` in the logger's folder, and a new run would get a new
    version folder (so it would find nothing and silently start from scratch).
    """
    init = _run_logger_args(config)
    if init is None:
        return
    root = _runs_of(init)
    versions = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    resumable = [v for v in versions if (v / "checkpoints" / "last.ckpt").exists()]
    if not resumable:
        raise UserError(f"--ckpt_path last: no last.ckpt under {root}/version_*/checkpoints")
    latest = resumable[-1]
    init.version = int(latest.name.split("_")[1])
    check_checkpoint(latest / "checkpoints" / "last.ckpt", config.get("weights_only") is not False)



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
