"""Faults a handler never sees and faults one after another: checkpoints by time, SIGKILL, and a
run hit by four mixed faults that must end as the uninterrupted one.

    .venv/bin/python -m pytest -q tests/test_faults.py

A SIGKILL needs a second process: those runs are `python -m resnext_lit fit` subprocesses,
killed with every process they started while they wait at a step (`helpers.run_signalled`);
SIGTERM and SIGUSR1 are raised by in-process runs themselves (`helpers.SignalAt`).
"""

from __future__ import annotations

import csv
import json
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from lightning import Callback

from helpers import run_signalled
from helpers.resume import (
    EPOCHS,
    PROGRESSIVE,
    STEPS,
    TINY,
    assert_same_weights,
    final_weights,
    fit_here,
)

EVERY = "--checkpoint_every_minutes=0.01"  # last.ckpt every 0.6 s of training, mid-epoch
DIGITS = ["--data.init_args.image_size=16", "--trainer.limit_train_batches=6"]  # 3 x 6 steps


class SleepAt(Callback):
    """Sleep `seconds` at the end of step `step` (a slow step: a timed checkpoint falls due)."""

    def __init__(self, step: int, seconds: float):
        self.step, self.seconds = step, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            time.sleep(self.seconds)


def killed_at(cwd: Path, step: int, args: list[str]) -> None:
    """A subprocess run, SIGKILLed with every process it started at `step`."""
    out = run_signalled(["fit", *args, "--ckpt_path=last", "--run_root", str(cwd / "runs")],
                        cwd, step, signal.SIGKILL, to_step=True)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]


def saved_step(cwd: Path) -> int:
    (path,) = (cwd / "runs").rglob("last.ckpt")
    return torch.load(path, weights_only=True)["global_step"]


@pytest.mark.slow
def test_a_sigkill_after_a_checkpoint_by_time_resumes_from_it(tmp_path):
    """`--checkpoint_every_minutes`: last.ckpt mid-epoch, so a SIGKILL (which no handler sees)
    costs the steps since, not the epoch (before: no such option)."""
    args = [*TINY, *DIGITS, EVERY, "--trainer.callbacks+=test_faults.SleepAt",
            "--trainer.callbacks.step=3", "--trainer.callbacks.seconds=1.0"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    fit_here(reference, *args)
    killed.mkdir()
    killed_at(killed, 5, args)
    assert 3 <= saved_step(killed) < 5  # written after step 3's second, before the kill
    fit_here(killed, *args, "--ckpt_path=last")
    assert_same_weights(final_weights(killed), final_weights(reference))


FAULTS = (signal.SIGKILL, signal.SIGTERM, signal.SIGUSR1)


def faults(steps: int, seed: int = 35, count: int = 4) -> list[tuple[int, int]]:
    """(step, signal): a SIGKILL at step 1, before any checkpoint, then `count` - 1 faults at
    random later steps of the run's `steps`, of random kinds, drawn from `seed`."""
    rng = random.Random(seed)
    later = sorted(rng.sample(range(2, steps), count - 1))
    return [(1, signal.SIGKILL)] + [(step, rng.choice(FAULTS)) for step in later]


@pytest.fixture
def digits_uninterrupted(tmp_path) -> Path:
    fit_here(tmp_path / "reference", *TINY, *DIGITS)
    return tmp_path / "reference"


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["torch", "ffcv"])
def test_a_run_hit_by_four_faults_ends_as_the_uninterrupted_one(loader, tmp_path, request):
    """SIGKILL, SIGTERM, SIGUSR1 at random steps, each followed by `--ckpt_path last`, with
    checkpoints by time: the uninterrupted run's weights, one folder, one record with each
    epoch once, each metrics row once, no temporary file (before: a SIGKILL before the first
    checkpoint left a second folder whose record said "running" for ever). On the digits in a
    torch DataLoader, and on their betons with progressive resizing."""
    if loader == "ffcv":
        args = [*TINY, *request.getfixturevalue("digit_betons"), *PROGRESSIVE, EVERY]
        reference, steps = request.getfixturevalue("ffcv_uninterrupted"), EPOCHS * STEPS
    else:
        args = [*TINY, *DIGITS, EVERY]
        reference, steps = request.getfixturevalue("digits_uninterrupted"), EPOCHS * 6
    hit = tmp_path / "hit"
    hit.mkdir()
    for step, signum in faults(steps):
        if signum == signal.SIGKILL:
            killed_at(hit, step, args)
        else:
            fit_here(hit, *args, "--ckpt_path=last", "--trainer.callbacks+=helpers.SignalAt",
                     f"--trainer.callbacks.step={step}",
                     f"--trainer.callbacks.signum={int(signum)}", status=128 + signum)
    fit_here(hit, *args, "--ckpt_path=last")
    assert_same_weights(final_weights(hit), final_weights(reference))
    (folder,) = (hit / "runs" / "demo").iterdir()
    record = json.loads((folder / "results.json").read_text())
    assert record["status"] == "finished"
    assert [e["epoch"] for e in record["epochs"]] == list(range(EPOCHS))
    with open(folder / "metrics.csv", newline="") as file:
        rows = [(row["step"], tuple(sorted(k for k, v in row.items() if v)))
                for row in csv.DictReader(file)]
    assert len(rows) == len(set(rows)) and rows  # no step logged twice
    assert not list(folder.rglob("*.tmp"))
