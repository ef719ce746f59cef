"""Checkpoints, in one place: which files a run keeps, how they are written, what is refused,
and how a file is checked before it is read.

    python -m resnext_lit fit --config configs/demo.yaml       # every checkpoint goes through here
    from resnext_lit.training.checkpoints import check_checkpoint
    check_checkpoint("runs/demo/k3x9a0qz/checkpoints/last.ckpt")   # UserError in one line

- Which files: `BEST_CHECKPOINT` (the epoch with the lowest `val/top1_err`) and
  `LAST_CHECKPOINT` (`last.ckpt`, rewritten every epoch), the CLI's built-in `ModelCheckpoint`s
  (`resnext_lit.training.lightning_cli`; `last.ckpt` has its own because Lightning 2.6 refreshes
  a monitoring ModelCheckpoint's save_last file only in epochs that improved the metric).
  `save_last` writes `last.ckpt` at a step boundary when a run is preempted
  (`resnext_lit.training.preemption`).
- How: `AtomicCheckpointIO` (installed by `use_atomic_checkpoints`) writes each checkpoint to a
  temporary file in its own folder, fsyncs it and renames it over the old one: a crash, a kill
  or a full disk leaves the previous file, never half a file. Lightning 2.6's own "atomic" save
  writes through the system temp folder, which is a plain, interruptible copy when that folder is
  on another disk (and it holds the whole checkpoint in memory first).
- What is refused: a state dict holding NaN or inf (`check_weights`), so the previous file stays
  the one to resume from; and the start-up weights file is not named in a checkpoint's
  hyperparameters (`forget_start_weights`): the checkpoint holds the weights.
- Reading: `check_checkpoint` opens a file before Lightning does (tensors stay on disk) and
  `AtomicCheckpointIO.load_checkpoint` fails in one line naming it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..atomic import atomic_write
from ..errors import UserError
from ..models.weights import load_failure
from .nonfinite import NonFiniteError

# The built-in ModelCheckpoints' init_args (the CLI's `builtins.best_checkpoint` and
# `builtins.last_checkpoint`, shown by --print_config).
BEST_CHECKPOINT = {"monitor": "val/top1_err", "mode": "min",
                   "filename": "epoch{epoch:03d}-err{val/top1_err:.2f}",
                   "auto_insert_metric_name": False}
LAST_CHECKPOINT = {"filename": "last", "enable_version_counter": False}


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` through `resnext_lit.atomic.atomic_write` (temporary file beside the target,
    fsync, `os.replace`, fsync the folder), never with NaN or inf weights. Remote paths (s3://,
    ...) keep Lightning's fsspec transaction."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        check_weights(checkpoint.get("state_dict", {}), path)
        with atomic_write(path, "wb", fsync=True) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        try:
            return super().load_checkpoint(path, map_location, weights_only)
        except Exception as err:  # one line naming the file, not torch's page of advice
            raise UserError(unreadable(path, err, weights_only)) from None


def use_atomic_checkpoints(trainer) -> None:
    """Every checkpoint of `trainer` through `AtomicCheckpointIO` (a user's own IO stays)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def check_weights(state_dict: dict, path) -> None:
    """Raise `NonFiniteError` if a floating-point tensor of `state_dict` holds NaN or inf."""
    bad = [k for k, v in state_dict.items()
           if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteError(f"refusing to save {path}: {len(bad)} weight tensors hold NaN or "
                             f"inf (first: {bad[0]}); the previous checkpoint is kept")


def forget_start_weights(checkpoint: dict) -> None:
    """The checkpoint holds the weights now: rebuilt from it (`load_from_checkpoint`,
    `--ckpt_path`), the module must not read its start-up `weights` file again, which may be
    gone. The run's hparams.yaml and config still name the file."""
    if "hyper_parameters" in checkpoint:
        checkpoint["hyper_parameters"]["weights"] = None


def last_checkpoint_path(trainer) -> Path:
    """Where `fit --ckpt_path last` looks: the ModelCheckpoint's folder (the run's checkpoints/)."""
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None) or Path(trainer.log_dir or trainer.default_root_dir,
                                                        "checkpoints")
    name = getattr(callback, "CHECKPOINT_NAME_LAST", "last") + ".ckpt"
    return Path(folder) / name


def save_last(trainer) -> Path:
    """Write the run's `last.ckpt` now (every rank calls it: the save synchronises them)."""
    path = last_checkpoint_path(trainer)
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last:
            # Before saving, so the checkpoint says so: resumed, it then keeps writing
            # last.ckpt rather than last-v1.ckpt beside a file it does not know.
            callback.last_model_path = str(path)
    trainer.save_checkpoint(path, weights_only=False)
    return path


def unreadable(path, err: BaseException, weights_only) -> str:
    unsafe, reason = load_failure(err)
    if unsafe or "Weights only load failed" in str(err):
        return (f"checkpoint {path} holds Python objects that weights_only loading refuses "
                f"({unsafe or 'an object outside the allowed types'}); pass --weights_only=false "
                "only if you trust where it came from")
    if isinstance(err, FileNotFoundError):
        return f"checkpoint {path} does not exist"
    return (f"checkpoint {path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
            f"{reason}")


def check_checkpoint(path, weights_only: bool = True) -> None:
    """Raise a one-line UserError unless `path` opens as a checkpoint (tensors stay on disk)."""
    try:
        torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except Exception as err:
        if "mmap" in str(err):  # a legacy (non-zip) file: read it whole
            try:
                torch.load(path, map_location="cpu", weights_only=weights_only)
                return
            except Exception as again:
                err = again
        raise UserError(unreadable(path, err, weights_only)) from None
