"""Learning-rate schedules, stepped per iteration: one formula each, in epochs.

    >>> lr_factor("step", epoch=30.0, max_epochs=90, milestones=[30, 60])   # 0.1

`epoch` is fractional (step / steps_per_epoch), so drops land on the exact iteration and a
schedule keeps its shape whatever the batch size or number of GPUs.

- "step": the paper's (Sec. 4, fb.resnet.torch): x gamma at each milestone epoch (ImageNet 30,
  60, 90; CIFAR 150, 225).
- "cosine": half a cosine from 1 to 0 over the epochs after warmup (Loshchilov & Hutter 2017).
- "triangular": ffcv-imagenet's (`get_cyclic_lr`): linear from `TRIANGULAR_START` (1e-4) up to
  1 at `peak_epoch`, then down to 0 at the end.
"step" and "cosine" take an optional linear warmup from 0 over `warmup_epochs` (Goyal et al.
2017, for large batches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import UserError

SCHEDULES = ("step", "cosine", "triangular")
TRIANGULAR_START = 1e-4  # ffcv-imagenet starts its ramp at 1e-4 x the peak lr, not at 0


def check_schedule(schedule: str, max_epochs: float, milestones: Sequence[int] = (),
                   warmup_epochs: float = 0.0, peak_epoch: float = 2.0,
                   limit: str | None = None) -> None:
    """One-line UserErrors for a schedule that cannot run as asked, before any training.
    `max_epochs` is the schedule's length, `limit` how the message names it (a step-limited
    run's is max_steps / steps per epoch)."""
    limit = limit or f"trainer.max_epochs={max_epochs}"
    if schedule not in SCHEDULES:
        raise UserError(f"model.schedule must be one of {', '.join(SCHEDULES)}, "
                        f"got {schedule!r}")
    if schedule == "step" and any(m <= 0 or m >= max_epochs for m in milestones):
        raise UserError(f"model.milestones {list(milestones)} must lie inside (0, {limit})")
    if not 0 <= warmup_epochs < max_epochs:
        raise UserError(f"model.warmup_epochs={warmup_epochs} must be in [0, {limit})")
    if schedule == "triangular" and not 0 < peak_epoch < max_epochs:
        raise UserError(f"model.peak_epoch={peak_epoch} must be in (0, {limit})")


def lr_factor(schedule: str, epoch: float, max_epochs: int, milestones: Sequence[int] = (),
              gamma: float = 0.1, warmup_epochs: float = 0.0, peak_epoch: float = 2.0) -> float:
    """The multiplier of the base learning rate at fractional `epoch`."""
    if schedule == "triangular":
        if epoch < peak_epoch:
            return TRIANGULAR_START + (1 - TRIANGULAR_START) * epoch / peak_epoch
        return max(0.0, (max_epochs - epoch) / max(max_epochs - peak_epoch, 1e-9))
    warmup = epoch / warmup_epochs if epoch < warmup_epochs else 1.0
    if schedule == "step":
        return warmup * gamma ** sum(epoch >= m for m in milestones)
    if schedule == "cosine":
        # (the max() guards smoke runs, e.g. fast_dev_run's single epoch, from dividing by 0)
        progress = max(0.0, epoch - warmup_epochs) / max(max_epochs - warmup_epochs, 1e-9)
        return warmup * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    raise UserError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
