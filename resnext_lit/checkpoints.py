"""Checkpoint files that survive crashes: atomic writes, no NaN weights, one-line load errors.

    python -m resnext_lit fit --config configs/demo.yaml   # every checkpoint goes through it
    from resnext_lit.checkpoints import check_checkpoint
    check_checkpoint("runs/demo/version_0/checkpoints/last.ckpt")   # UserError in one line

`AtomicCheckpointIO` (installed by `resnext_lit.reliability.Preemption` in place of Lightning's
`TorchCheckpointIO`) writes each checkpoint to a temporary file in its own folder, fsyncs it and
renames it over the old one: a crash, a kill or a full disk leaves the previous file, never half
a file. Lightning 2.6's own "atomic" save writes through the system temp folder, which is a plain,
interruptible copy when that folder is on another disk (and it holds the whole checkpoint in
memory first). A state dict holding NaN or inf is never written.
"""

from __future__ import annotations

from pathlib import Path

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .atomic import atomic_write
from .errors import UserError
from .models.weights import load_failure
from .nonfinite import check_weights


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` through `resnext_lit.atomic.atomic_write` (temporary file beside the target,
    fsync, `os.replace`, fsync the folder). Remote paths (s3://, ...) keep Lightning's fsspec
    transaction."""

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


def last_checkpoint_path(trainer) -> Path:
    """Where `fit --ckpt_path last` looks: the ModelCheckpoint's folder (the run's checkpoints/)."""
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None) or Path(trainer.log_dir or trainer.default_root_dir,
                                                        "checkpoints")
    name = getattr(callback, "CHECKPOINT_NAME_LAST", "last") + ".ckpt"
    return Path(folder) / name
