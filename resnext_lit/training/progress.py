"""The progress bar of `fit`: Rich's, showing the training loss without a sync per step.

    python -m resnext_lit fit --config configs/demo.yaml          # builtins.progress_bar
    python -m resnext_lit fit --config configs/demo.yaml --trainer.enable_progress_bar false
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar

SHORT = {"val/top1_err": "val_err"}  # top-1 error (%), the paper's measure


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
    BAR_WIDTH = 8  # Rich's 40 pushes the metrics onto two more lines at 80 columns

    def __init__(self, refresh_rate: int = 1, leave: bool = True):
        super().__init__(refresh_rate=refresh_rate, leave=leave)

    def configure_columns(self, trainer) -> list:
        columns = super().configure_columns(trainer)
        for column in columns:
            if hasattr(column, "bar_width"):
                column.bar_width = self.BAR_WIDTH
        return columns

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run's id is in the run line; a float here (0.000)
        if trainer.training:
            loss = trainer.callback_metrics.get("train/loss_step")
            if loss is not None and (self._loss is None
                                     or trainer.global_step % trainer.log_every_n_steps == 0):
                self._loss = float(loss)
        shown = {"loss": f"{self._loss:.3f}"} if self._loss is not None else {}  # past the epoch
        for key, value in metrics.items():  # short names keep an epoch on one line
            shown[SHORT.get(key, key)] = f"{value:.2f}" if key in SHORT else value
        return shown

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Rich's bar reads the metrics here, on rank 0 only, before Lightning reduces the epoch's
        # metrics on every rank: the rank-0-only all-reduce met the other ranks' epoch-end
        # collectives and DDP hung at the first epoch end. The bar picks them up after it.
        self.refresh()
