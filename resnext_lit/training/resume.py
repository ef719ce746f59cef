"""Resume exactly: a resumed run sees the data the uninterrupted one would have.

    python -m resnext_lit fit --config configs/demo.yaml --ckpt_path last   # the newest run
    sbatch scripts/slurm_train.sbatch ...     # requeued, the job continues its own run

- Which run a command continues (its folder, checkpoint, record and W&B run) is decided
  before anything starts: `resnext_lit.run_identity` (the rules) and
  `resnext_lit.training.run` (the CLI's side).
- Exactly: `ExactResume` (a callback, `builtins.exact_resume`) seeds epoch e's data order and
  augmentations from (seed, e, rank), and a run resumed mid-epoch skips the batches it already
  trained on, so the resumed run sees the batches the uninterrupted run would have (bit-exact on
  CPU with torch DataLoaders).
- What else a checkpoint restores is its owner's: the record's epochs and wall time
  (`resnext_lit.training.record_writer`), FFCV's epoch order (`resnext_lit.data.ffcv` reads the
  Trainer's epoch), the lr schedule's step (Lightning).
"""

from __future__ import annotations

import os
import random
import sys
import warnings

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from ..errors import UserError


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


ORDER = "global-v1"  # the data order a checkpoint's epoch was trained in (`data.order`)


def _batches(trainer) -> dict:
    """The run's batch sizes: per device (BatchNorm's batch), and the global (optimiser) batch
    over every device and accumulated micro-batch."""
    per_device = getattr(trainer.datamodule, "batch_size", None)
    # Plain ints: a config's PositiveInt would make the checkpoint unreadable weights_only.
    per_device = None if per_device is None else int(per_device)
    return {"per_device_batch": per_device, "accumulate": int(trainer.accumulate_grad_batches),
            "global_batch": None if per_device is None else
            per_device * trainer.world_size * trainer.accumulate_grad_batches}


def _check_same_order(state: dict, trainer) -> None:
    """A mid-epoch checkpoint resumes only where the epoch's remaining images are the ones the
    saved run had not seen: the same global order (`resnext_lit.data.order`) and the same
    images per step, on any number of processes. Else one line, before anything is written."""
    if not state.get("batches_done"):
        return
    now = _batches(trainer)
    where = (f"this checkpoint was saved {state['batches_done']} steps into epoch "
             f"{state['epoch']} by {state.get('world_size')} process(es)")
    if state.get("order") != ORDER:
        raise UserError(f"{where} in an older data order than this version's: the rest of that "
                        "epoch would be other images; resume from an epoch's end, or with "
                        "--builtins.exact_resume null to accept another order")
    if (state.get("global_batch"), state.get("accumulate")) != (now["global_batch"],
                                                                now["accumulate"]):
        raise UserError(
            f"{where} with global batch {state.get('global_batch')} (accumulating "
            f"{state.get('accumulate')}); this run's is {now['global_batch']} (accumulating "
            f"{now['accumulate']}): its steps would hold other images. Resume with the global "
            "batch of the checkpoint (--global_batch_size), or from an epoch's end")


def _say_batch_change(state: dict, trainer) -> None:
    """One start-up line when the per-device batch (BatchNorm's batch) is not the saved run's."""
    now = _batches(trainer)
    saved = state.get("per_device_batch")
    if trainer.is_global_zero and saved not in (None, now["per_device_batch"]):
        print(f"resume: {now['per_device_batch']} images per device on {trainer.world_size} "
              f"process(es), {saved} on the checkpoint's {state.get('world_size')} (BatchNorm's "
              f"batch changes); the global batch is {now['global_batch']} in both, so every "
              "step trains the same images", file=sys.stderr)


# -- exact resume --------------------------------------------------------------------------
class ExactResume(Callback):
    """Make a resumed run see the data the uninterrupted one would have.

    - Seeds Python, NumPy and torch (all devices) from (seed, epoch, rank) before each epoch's
      data iterator exists, so data order and augmentations depend on the epoch, not on history.
      The seed is `seed_everything`'s (PL_GLOBAL_SEED), kept in the checkpoint; without one,
      nothing is reseeded. The rank keeps DDP ranks' augmentations apart.
    - Resuming mid-epoch, skips the batches already trained: Lightning 2.6 restarts a plain
      DataLoader (or FFCV Loader) at its first batch and stops it early instead. Our FFCV
      loaders start the epoch's order that far in (nothing read or decoded); a DataLoader's
      batches are drawn and dropped (loading, no compute). Loaders with their own state_dict
      are left to Lightning.
    - Another world size mid-epoch: every training loader we ship trains step s of an epoch on
      images [s*B, (s+1)*B) of one permutation of (seed, epoch), B the global batch, split over
      the ranks (`resnext_lit.data.order`), so a run saved on W processes resumes exactly on
      any W' (1 included) with the same global batch; the per-device batch, BatchNorm's batch,
      then changes, and a start-up line says so. Another global batch mid-epoch is refused in
      one line.
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
        trainer = self._trainer
        epoch = next_epoch(trainer)
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return {"seed": self.seed, "epoch": epoch, "world_size": trainer.world_size,
                "order": ORDER, **_batches(trainer),
                "batches_done": done if epoch == trainer.current_epoch else 0}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]  # the run's own, whatever seed this process was given
        _check_same_order(state, self._trainer)
        _say_batch_change(state, self._trainer)
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
        fetcher, flat = loop._data_fetcher, loop._combined_loader.flattened
        # Our FFCV loaders start the epoch `done` batches in without decoding them (an ImageNet
        # epoch's worth of JPEGs on a late resume); other loaders draw them and drop them.
        sliced = done and all(callable(getattr(dl, "skip_batches", None)) for dl in flat)
        for loader in flat if sliced else ():
            loader.skip_batches(done)
        iter(fetcher)
        if not done:
            return
        if not sliced:
            if all(hasattr(dl, "load_state_dict") for dl in flat):
                return  # stateful loaders: Lightning restores them
            if getattr(fetcher, "batches", None) or fetcher.length is None:
                rank_zero_warn(f"resumed in the middle of epoch {epoch} without replaying its "
                               "data order (unsized loader)")
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
