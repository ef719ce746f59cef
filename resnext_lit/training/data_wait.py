"""Is training input-bound? The share of each training epoch spent waiting for the next batch.

    python -m resnext_lit fit --config configs/demo.yaml   # on by default in the CLI
    python -m resnext_lit summary runs/demo                # "input-bound: ..." when it is

`DataWait` logs, per training epoch, `train/data_wait_frac` (wait / (wait + compute)),
`train/data_ms_per_step` and `train/compute_ms_per_step` (a step is one training batch), so they
reach the CSV and W&B loggers and `results.json`, like the data time vs compute time that
NVIDIA's DeepLearningExamples print.
"""

from __future__ import annotations

import time

from lightning import Callback


class DataWait(Callback):
    """Host-clock split of every training step into waiting for data and the rest ("compute").

    Data wait is the gap from `on_train_batch_end` of step k to `on_train_batch_start` of step
    k+1 (and, for an epoch's first step, from `on_train_epoch_start`). In Lightning 2.6
    (`loops/training_epoch_loop.py`, `loops/fetchers.py`) that gap holds, in order: the
    `on_train_batch_end` of the callbacks after this one (the progress bar's redraw, the
    `ModelCheckpoint`s) and of the LightningModule; Lightning's step logging (at
    `log_every_n_steps`, a device read per logged value); then, in the next `advance`,
    `next(data_fetcher)` (one `next()` on the DataLoader's iterator), the precision plugin's
    `convert_input`, `on_before_batch_transfer`, the host->device copy (`non_blocking` on CUDA),
    `on_after_batch_transfer`, and the `on_train_batch_start` of the callbacks before this one.
    Which batch `next()` loads: with a loader of known length (a map-style DataLoader, FFCV's
    Loader) `_PrefetchDataFetcher` does not prefetch, so it loads batch k+1 itself; without a
    length it keeps one batch in hand, returns k+1 and loads k+2. Either way one load per gap;
    a worker-fed DataLoader's `next()` only blocks when its workers have fallen behind. At
    epochs after the first the fetcher's `iter()` (worker start-up unless `persistent_workers`;
    for an unsized loader, the epoch's first batch) runs after `on_train_epoch_start`, so it
    counts as wait. Compute is the rest of each step: from `on_train_batch_start` to
    `on_train_batch_end` (forward, backward, optimiser and lr scheduler step). Validation inside
    an epoch counts as neither, nor does the time from the last step to the epoch's end.

    Why the host clock, with no device sync: the training step only queues work on the GPU,
    so the host runs ahead until something makes it wait, either the device (a full launch
    queue, a read) inside the step, or the loader in the gap. A run whose loader keeps up finds
    each batch ready (wait near 0); a run whose loader does not drains the GPU's queue while the
    host waits in `next()`. On the CPU host and device are one, and the split is exact.

    What it misses, on a GPU: "compute" is the host's share of a step (launching kernels plus
    any wait for the device inside it), not the device's time. The GPU's idle time is the wait
    minus the work still queued when the wait began, so the share overstates how much a faster
    loader would buy: e.g. a loader at 200 ms a batch, 150 ms of GPU work and 20 ms of launches
    log 90% wait where the GPU idles 25%. Read a high share as "the loader sets the pace"; what
    a faster loader would buy is bounded by the img/s of the same run on
    `resnext_lit.data.synthetic.SyntheticDataModule` (no decoding). Unseen: the device side of
    the host->device copy (asynchronous from pinned memory). Misfiled: the device read at
    logging steps lands in the gap, so once every `log_every_n_steps` the drain of the steps
    still queued counts as wait.

    Under DDP every rank times its own steps and the logged values are the mean over ranks
    (`sync_dist`: all-reduces at epoch end, none per step). A rank whose loader is slow makes
    the others wait in the gradient all-reduce, which they count as compute, so one slow rank's
    share is diluted by the world size.
    """

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self.wait_s = self.compute_s = 0.0
        self.steps = 0
        self._mark = time.perf_counter()  # when the current wait began; None: not waiting
        self._started = None              # when the current step began

    # A run resumed mid-epoch gets on_train_start but no on_train_epoch_start.
    def on_train_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._mark is not None:
            self.wait_s += now - self._mark
        self._started, self._mark = now, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._started is not None:
            self.compute_s += now - self._started
            self.steps += 1
        self._started, self._mark = None, now

    def on_validation_start(self, trainer, pl_module) -> None:
        self._mark = None  # validation (and the step's tail before it) is neither side

    def on_validation_end(self, trainer, pl_module) -> None:
        self._mark = time.perf_counter()  # the next training batch's wait starts here

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.steps:
            return
        total = self.wait_s + self.compute_s
        values = {"train/data_wait_frac": self.wait_s / total if total > 0 else 0.0,
                  "train/data_ms_per_step": 1000 * self.wait_s / self.steps,
                  "train/compute_ms_per_step": 1000 * self.compute_s / self.steps}
        for name, value in values.items():
            # batch_size=1: a plain mean over ranks, not weighted by the last batch's size
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True,
                          batch_size=1)
