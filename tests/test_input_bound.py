"""Input-bound diagnosis: the share of each training epoch spent waiting for the next batch.

    timeout -s KILL 600 .venv/bin/python -m pytest -q tests/test_input_bound.py

Two in-process `fit`s through the CLI (so the CLI's own `DataWait` and `ResultsWriter` run): a
loader that costs six model passes per training batch (a share near 6/7, far from the 0.5 it is
held to), and the in-memory digits with a heavy validation inside the epoch (which must not
count as waiting). Each assertion compares times of
one run that are all CPU work, so a busy machine slows both sides alike and the verdict holds.
"""

from __future__ import annotations

import csv
import functools
import json
import time
from pathlib import Path

import pytest
import torch
from lightning import Callback
from torch.utils.data import DataLoader, default_collate

from resnext_lit.cli import main
from resnext_lit.data.digits import DigitsDataModule
from resnext_lit.data.synthetic import SyntheticDataModule
from resnext_lit.experiments.summary import INPUT_BOUND_FRAC, input_bound
from resnext_lit.models import create_model

LOADER_PASSES = 6  # the slow loader's cost per batch, in passes of the model: share ~6/7
EPOCHS, STEPS = 2, 4
NET = {"depth": 11, "cardinality": 2, "bottleneck_width": 1}  # a tiny CIFAR-stem ResNeXt
VALIDATION_S: list[float] = []
KEYS = ("train/data_wait_frac", "train/data_ms_per_step", "train/compute_ms_per_step")
TINY = ["--model.arch=resnext29_8x64d", *(f"--model.{k}={v}" for k, v in NET.items()),
        "--model.schedule=cosine", "--model.warmup_epochs=0", "--trainer.accelerator=cpu",
        f"--trainer.max_epochs={EPOCHS}", f"--trainer.limit_train_batches={STEPS}",
        "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=2"]


def _costly_collate(samples, net):
    images, labels = default_collate(samples)
    with torch.enable_grad():
        for _ in range(LOADER_PASSES):
            net(images.float()).sum().backward()
    return images, labels


class SlowTrainData(SyntheticDataModule):
    """Synthetic images whose every training batch costs LOADER_PASSES forward and backward
    passes of a copy of the run's network (heavy CPU augmentation, say). Not a sleep: the
    loader's cost grows with the machine's load as the training step's does, so the share
    holds on a busy machine (a fixed 80 ms sleep read 0.28 there, the model's step slowed 10x)."""

    def train_dataloader(self) -> DataLoader:
        net = create_model("resnext29_8x64d", num_classes=self.num_classes, **NET)
        return DataLoader(super().train_dataloader().dataset, self.batch_size, shuffle=True,
                          drop_last=True, collate_fn=functools.partial(_costly_collate, net=net))


class ValClock(Callback):
    """Appends each validation's wall time to VALIDATION_S."""

    def on_validation_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        VALIDATION_S.append(time.perf_counter() - self._start)


class HeavyValDigits(DigitsDataModule):
    """The in-memory digits; each validation is the whole val set (360 images) in one batch,
    about four training steps' worth of compute."""

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, len(self.val_set))


@pytest.fixture(autouse=True)
def one_thread():
    """Loader and training step both on one core: on a machine busy with other work, a
    two-thread step loses more to the load than the one-thread loader, and the shares moved
    (seen: the digits' wait at 25% beside another test process, 10-15% alone)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(tmp_path, monkeypatch, data: str, *args: str) -> tuple[dict, list[dict]]:
    """(results.json, metrics.csv rows) of a tiny in-process `fit` run in tmp_path."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *TINY, f"--data={data}", *args]) == 0
    (path,) = Path(tmp_path).rglob("results.json")
    with open(path.parent / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return json.loads(path.read_text()), rows


def summary_of(tmp_path, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "200")  # Rich would wrap the table's headers at 80
    capsys.readouterr()
    assert main(["summary", str(tmp_path)]) == 0
    return capsys.readouterr().out


def check_split(epoch: dict) -> None:
    wait, compute = epoch["train/data_ms_per_step"], epoch["train/compute_ms_per_step"]
    assert wait > 0 and compute > 0
    assert epoch["train/data_wait_frac"] == pytest.approx(wait / (wait + compute), rel=1e-4)


def test_a_slow_loader_shows_a_high_wait_share_and_summary_says_input_bound(
        tmp_path, monkeypatch, capsys):
    record, rows = fit(tmp_path, monkeypatch, "test_input_bound.SlowTrainData",
                       "--data.image_size=8", "--data.batch_size=8", "--data.num_train=64")
    assert [e["epoch"] for e in record["epochs"]] == list(range(EPOCHS))
    for epoch in record["epochs"]:
        check_split(epoch)
        assert epoch["train/data_wait_frac"] > 0.5
    logged = [r for r in rows if r.get("train/data_wait_frac")]  # the CSV logger got them
    assert len(logged) == EPOCHS and all(r[key] for r in logged for key in KEYS)
    out = summary_of(tmp_path, capsys, monkeypatch)
    assert "data wait %" in out
    worst = max(record["epochs"], key=lambda e: e["train/data_wait_frac"])
    assert (f"input-bound: the loader held back {worst['train/data_wait_frac']:.0%} of epoch "
            f"{worst['epoch']}") in out


def test_in_memory_digits_wait_little_and_validation_does_not_count(
        tmp_path, monkeypatch, capsys):
    # Validation after step 2 (and 4, after the epoch's last step, never counted): counted as
    # waiting, the one inside the epoch would add its whole time to the epoch's wait.
    # 16 px: at 8 px the digits' per-image crop is near a fifth of the tiny model's step.
    VALIDATION_S.clear()
    record, _ = fit(tmp_path, monkeypatch, "test_input_bound.HeavyValDigits",
                    "--data.image_size=16", "--data.batch_size=32", "--trainer.max_epochs=1",
                    "--trainer.val_check_interval=0.5",
                    "--trainer.callbacks+=test_input_bound.ValClock")
    (epoch,) = record["epochs"]
    check_split(epoch)
    assert epoch["train/data_wait_frac"] < 0.5
    assert len(VALIDATION_S) == 2
    assert epoch["train/data_ms_per_step"] * STEPS / 1000 < 0.5 * min(VALIDATION_S)
    out = summary_of(tmp_path, capsys, monkeypatch)
    assert "data wait %" in out and "input-bound" not in out


def test_summary_names_the_worst_epoch_above_the_threshold_only():
    low, high = INPUT_BOUND_FRAC / 2, (INPUT_BOUND_FRAC + 0.38) / 2  # the worst is 0.38
    assert input_bound([{"epoch": 0, "train/data_wait_frac": low}]) is None
    assert input_bound([{"epoch": 0}]) is None  # a record from before the metric existed
    epochs = [{"epoch": 0, "train/data_wait_frac": high}, {"epoch": 1, "train/data_wait_frac": low},
              {"epoch": 2, "train/data_wait_frac": 0.38}]
    assert input_bound(epochs) == ("input-bound: the loader held back 38% of epoch 2 "
                                   f"(2 of 3 epochs above {INPUT_BOUND_FRAC:.0%})")
    assert input_bound(epochs[2:]) == "input-bound: the loader held back 38% of epoch 2"
