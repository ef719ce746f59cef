"""The progress bar of `fit`: Rich's, showing the training loss without a sync per step.

    python -m resnext_lit fit --config configs/demo.yaml          # builtins.progress_bar
    python -m resnext_lit fit --config configs/demo.yaml --trainer.enable_progress_bar false
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class LogStepProgressBar(RichProgressBar):
    """Rich's bar, showing the training loss as read at logging steps only.

    Lightning turns every `prog_bar=True` step metric into a Python number after every step (a
    device->host sync each), so the module logs `train/loss_step` off the bar and the bar reads
    it here, every `trainer.log_every_n_steps` steps (when the loggers read it too).

    Args:
        refresh_rate: redraw every this many batches (Rich's).
        leave: keep each epoch's bar on screen (Lightning's default clears it).
    """

    _loss: float | None = None

    def __init__(self, refresh_rate: int = 1, leave: bool = True):
        super().__init__(refresh_rate=refresh_rate, leave=leave)

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.training:
            loss = trainer.callback_metrics.get("train/loss_step")
            if loss is not None and (self._loss is None
                                     or trainer.global_step % trainer.log_every_n_steps == 0):
                self._loss = float(loss)
            if self._loss is not None:
                metrics["train/loss"] = self._loss
        return metrics

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Rich's bar reads the metrics here, on rank 0 only, before Lightning reduces the epoch's
        # metrics on every rank: the rank-0-only all-reduce met the other ranks' epoch-end
        # collectives and DDP hung at the first epoch end. The bar picks them up after it.
        self.refresh()
