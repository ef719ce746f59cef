"""A NaN or inf training loss stops (or skips) training before any checkpoint sees it.

    python -m resnext_lit fit --config configs/demo.yaml                  # stop on a bad loss
    python -m resnext_lit fit --config configs/demo.yaml --model.nonfinite_loss=skip

- `NonFiniteGuard`: the module's check of every training loss (`ResNeXtModule.training_step`):
  stop with one line naming the step, epoch and learning rate, or skip the step.
- `NonFiniteError`: what it raises, and what the checkpoint writer raises for NaN or inf weights
  (`resnext_lit.training.checkpoints.check_weights`); `resnext_lit.training.lightning_cli.run_cli`
  prints it as one line and exits with status 1 (the data or the lr is at fault, not the command
  line).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

MAX_SKIPPED_IN_A_ROW = 20  # more consecutive non-finite losses means the weights are gone
# How often the sync-free check reads its device-side record (one sync, one collective under DDP).
NONFINITE_CHECK_EVERY_N_STEPS = 50
_NONE_BAD = 2**62  # "no non-finite loss in this window" (an index never reached)


class NonFiniteError(RuntimeError):
    """Training produced NaN or inf; stopped before it reached a checkpoint."""


class NonFiniteGuard:
    """The training step's check: `if not guard.check(module, loss, batch_idx): return None`.

    A module hook and not a callback, because only `training_step` can skip a step (by returning
    None: no backward, no update). Ranks agree on the verdict, so DDP ranks stop or skip together.

    - "stop" (the default) costs no device sync per step: each loss's finiteness is folded into
      a device-side record (the first non-finite step of the window and its value), and the
      record is read every `every_n_steps` steps, at each epoch's last step and before any
      checkpoint is written (`verify`). A bad loss therefore stops training at most
      `every_n_steps - 1` steps later, never after a checkpoint saw it, and the line names the
      step it happened at and the steps the check covered.
    - "skip" must know each step's verdict before its backward: one sync per step. A skipped
      step leaves the weights and the optimiser's state as they were (no backward, so no
      gradient: SGD passes over every parameter), and the BatchNorm running statistics too:
      its forward pass already wrote the bad batch into them, so `keep` copies them before the
      forward and a skip puts them back (a few hundred KB for ResNeXt-101).
    """

    def __init__(self, mode: str = "stop", every_n_steps: int = NONFINITE_CHECK_EVERY_N_STEPS):
        self.mode, self.every_n_steps = mode, every_n_steps
        self.skipped, self._in_a_row = 0, 0
        self.last_ok = True  # the latest step was taken (the EMA follows only those)
        self._window: list[tuple[int, int, int, float]] = []  # (step, epoch, batch, lr) unread
        self._first = self._value = None  # device: window index of the first bad loss, its value

    def keep(self, model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Before the forward pass, in "skip" mode: (buffer, its copy) of every buffer the
        forward writes (BatchNorm's running mean, variance and batch count)."""
        if self.mode != "skip":
            return None
        return [(b, b.detach().clone()) for b in model.buffers()]

    def check(self, module, loss: torch.Tensor, batch_idx: int, statistics=None) -> bool:
        trainer = module.trainer
        if self.mode == "skip":
            taken = self._check_now(trainer, loss, batch_idx)
            if not taken:
                with torch.no_grad():
                    for buffer, before in statistics or ():
                        buffer.copy_(before)
            return taken
        loss = loss.detach()
        if self._first is None:
            self._first = torch.full((), _NONE_BAD, dtype=torch.long, device=loss.device)
            self._value = torch.zeros((), dtype=loss.dtype, device=loss.device)
        new = ~torch.isfinite(loss) & (self._first == _NONE_BAD)  # device ops only
        self._first = torch.where(new, len(self._window), self._first)
        self._value = torch.where(new, loss, self._value)
        self._window.append((trainer.global_step, trainer.current_epoch, batch_idx,
                             trainer.optimizers[0].param_groups[0]["lr"]))
        if (len(self._window) >= self.every_n_steps
                or batch_idx == trainer.num_training_batches - 1):
            self.verify(trainer)
        return True

    def verify(self, trainer) -> None:
        """Read the record (one sync, one all-reduce under DDP); raise if a loss was not finite.
        Every rank calls it at the same step (their windows are equally long)."""
        if not self._window:
            return
        first = self._first
        if trainer.world_size > 1:
            first = first.clone()
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        index, mine = int(first), int(self._first)
        window, value = self._window, float(self._value)
        self._window, self._first, self._value = [], None, None
        if index == _NONE_BAD:
            return
        step, epoch, batch, lr = window[index]
        what = str(value) if mine == index else "non-finite (on another rank)"
        checked = (f"losses are read every {self.every_n_steps} steps: this check covered "
                   f"steps {window[0][0]}-{window[-1][0]}")
        raise NonFiniteError(f"{what} training loss at step {step} (epoch {epoch}, batch {batch})"
                             f" with lr {lr:.4g}; stopped before any checkpoint saw it ({checked})."
                             " Lower model.lr, check the data, or skip such steps with "
                             "--model.nonfinite_loss=skip")

    def _check_now(self, trainer, loss: torch.Tensor, batch_idx: int) -> bool:
        finite = bool(torch.isfinite(loss))
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        self.last_ok = finite
        if finite:
            self._in_a_row = 0
            return True
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        value = float(loss)
        what = "non-finite (on another rank)" if math.isfinite(value) else str(value)
        where = (f"{what} training loss at step {trainer.global_step} "
                 f"(epoch {trainer.current_epoch}, batch {batch_idx}) with lr {lr:.4g}")
        self.skipped, self._in_a_row = self.skipped + 1, self._in_a_row + 1
        if self._in_a_row <= MAX_SKIPPED_IN_A_ROW:
            rank_zero_warn(f"skipped a step: {where}")
            return False
        raise NonFiniteError(f"{where}: {self._in_a_row} skipped steps in a row, so training "
                             "no longer moves; stopped before any checkpoint saw it (the weights "
                             "are those before the first of them). Lower model.lr or check the "
                             "data")
