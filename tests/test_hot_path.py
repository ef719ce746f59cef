"""The training hot path reads nothing back from the device and calls no collective per step.

    .venv/bin/python -m pytest -q tests/test_hot_path.py

A real 2-rank DDP `fit` through the CLI (gloo, CPU), with the repo's own callbacks and progress
bar. `CountSyncs` (loaded by the run through PYTHONPATH) splits the run into step windows (from
one training batch's start to the next's) and records, per window and rank:
- reads: the calls that on a GPU wait for the device (`Tensor.item`, `bool`/`float`/`int` of a
  tensor, `tolist`, `numpy`, `cpu`, `unique`, `nonzero`, and `torch.tensor(..., device=...)`,
  a host->device copy that PyTorch makes synchronously), seen through a `TorchFunctionMode`;
- collectives: Python-level `torch.distributed` calls (DDP's own gradient all-reduce runs in
  C++ and is not counted: it is the one collective training needs).
Only the first window, the epoch's last step (epoch-end metrics, validation, checkpoint) and the
agreed check steps (`PREEMPTION_CHECK_EVERY_N_STEPS`, `NONFINITE_CHECK_EVERY_N_STEPS`) may
have any. Checkpoints by time are on (`--checkpoint_every_minutes`, never due here): whether
one is due travels in the agreed steps' all-reduce, so they add nothing to the other steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from lightning import Callback
from torch.overrides import TorchFunctionMode

from resnext_lit.training.nonfinite import NONFINITE_CHECK_EVERY_N_STEPS
from resnext_lit.training.preemption import PREEMPTION_CHECK_EVERY_N_STEPS

from helpers import DEVICE_READS, run_env

ROOT = Path(__file__).resolve().parents[1]
STEPS, EPOCHS = 12, 2
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_object", "reduce",
               "barrier", "broadcast_object_list", "gather", "scatter")


class _Reads(TorchFunctionMode):
    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DEVICE_READS:
            self.seen.append(getattr(func, "__name__", str(func)))
        elif func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None:
            self.seen.append("tensor(device=...)")
        return func(*args, **kwargs)


class CountSyncs(Callback):
    """Per step window: device reads and collectives; written to syncs-rank<R>.json at the end."""

    def __init__(self):
        self.windows, self._current, self._mode = [], None, None

    def setup(self, trainer, pl_module, stage):
        for name in COLLECTIVES:  # Lightning and torchmetrics call them as torch.distributed.X
            setattr(dist, name, self._counted(name, getattr(dist, name)))

    def _counted(self, name, call):
        def wrapper(*args, **kwargs):
            if self._current is not None:
                self._current["collectives"].append(name)
            return call(*args, **kwargs)
        return wrapper

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._close()
        self._current = {"epoch": trainer.current_epoch, "batch": batch_idx, "reads": [],
                         "collectives": []}
        self._mode = _Reads(self._current["reads"])
        self._mode.__enter__()

    def _close(self):
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.windows.append(self._current)
        self._mode = self._current = None

    def on_train_end(self, trainer, pl_module):
        self._close()
        Path(f"syncs-rank{trainer.global_rank}.json").write_text(json.dumps(self.windows))


@pytest.mark.slow
def test_no_read_and_no_collective_between_check_steps(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "resnext_lit", "fit", "--config", str(ROOT / "configs/demo.yaml"),
         "--model.depth=11", "--model.cardinality=2", "--model.bottleneck_width=2",
         "--model.warmup_epochs=0", "--data=resnext_lit.data.synthetic.SyntheticDataModule",
         "--data.image_size=8", "--data.batch_size=4", "--data.num_train=128",
         f"--trainer.max_epochs={EPOCHS}",
         f"--trainer.limit_train_batches={STEPS}", "--trainer.limit_val_batches=2",
         "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.log_every_n_steps=1000",
         "--trainer.enable_progress_bar=true", "--trainer.callbacks+=test_hot_path.CountSyncs",
         "--checkpoint_every_minutes=600"],
        cwd=tmp_path, text=True, capture_output=True, timeout=300, env=run_env(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert NONFINITE_CHECK_EVERY_N_STEPS > EPOCHS * STEPS  # only epoch ends check losses here
    for rank in range(2):
        windows = json.loads((tmp_path / f"syncs-rank{rank}.json").read_text())
        assert len(windows) == EPOCHS * STEPS
        agreed = {i for i in range(len(windows)) if (i + 1) % PREEMPTION_CHECK_EVERY_N_STEPS == 0}
        ends = {i for i, w in enumerate(windows) if w["batch"] == STEPS - 1}
        for i, w in enumerate(windows):
            if i == 0 or i in ends:
                continue  # the run's first step; the epoch's end
            if i in agreed:  # the ranks agree on a signal: one all-reduce
                assert w["collectives"] == ["all_reduce"], (rank, i, w)
            else:
                assert w["reads"] == [] and w["collectives"] == [], (rank, i, w)
        # Every other step is quiet: all but the first, the epoch ends and the agreed checks.
        quiet = [i for i in range(1, EPOCHS * STEPS)
                 if (i + 1) % STEPS and (i + 1) % PREEMPTION_CHECK_EVERY_N_STEPS]
        assert len(windows) - 1 - len(ends | agreed) == len(quiet) > EPOCHS * STEPS // 2
    # The epoch's end does read: the guard's flag, the metrics, the checkpoint.
    assert windows[STEPS - 1]["reads"] and windows[STEPS - 1]["collectives"]
