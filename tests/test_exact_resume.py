"""Exact resume on the paths ImageNet runs take: FFCV betons with progressive resizing, and torch
DataLoaders with worker processes under 2-rank DDP.

    .venv/bin/python -m pytest -q tests/test_exact_resume.py

Each run is a real `python -m resnext_lit fit` subprocess. `RecordBatches` (loaded by the runs
through PYTHONPATH) writes down every training batch each rank receives: epoch, batch index,
shape, labels and a checksum of the pixels. A run stopped inside an epoch (SIGTERM while
`PauseAtStep` holds it) or at its end (`max_steps`) and resumed with `--ckpt_path last` must get,
from the resume on, what the uninterrupted run got: the same resolution, the same order and,
where the loader's augmentations are seeded (torch DataLoaders), the same pixels. FFCV's random
crops are drawn by numba threads without a seed, so for FFCV pixels are not compared.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from lightning import Callback

from helpers import run_env, run_signalled

ROOT = Path(__file__).resolve().parents[1]
DEMO, DEMO_FFCV = str(ROOT / "configs/demo.yaml"), str(ROOT / "configs/data/demo_ffcv.yaml")
STEPS, EPOCHS = 4, 3
TINY = ["--model.depth=11", "--model.cardinality=2", "--model.bottleneck_width=2",
        "--model.warmup_epochs=0", "--trainer.enable_progress_bar=false",
        f"--trainer.max_epochs={EPOCHS}", f"--trainer.limit_train_batches={STEPS}",
        "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.callbacks+=test_exact_resume.RecordBatches"]
TIMEOUT_S = 600


class RecordBatches(Callback):
    """Appends one JSON line per training batch to `batches-rank<R>.jsonl` in the run's cwd."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        images, labels = batch
        line = {"epoch": trainer.current_epoch, "batch": batch_idx, "shape": list(images.shape),
                "labels": labels.tolist(), "checksum": float(images.double().sum())}
        with open(f"batches-rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


def batches(cwd: Path, rank: int = 0) -> dict[tuple[int, int], dict]:
    lines = (cwd / f"batches-rank{rank}.jsonl").read_text().splitlines()
    seen = {}
    for line in map(json.loads, lines):
        seen[line["epoch"], line["batch"]] = line  # a batch trained again after a resume wins
    return seen


def fit(cwd: Path, *args) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "resnext_lit", "fit", *args], cwd=cwd, text=True,
                         capture_output=True, timeout=TIMEOUT_S, env=run_env(cwd))
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def fit_stopped_at(cwd: Path, step: int, *args) -> str:
    """SIGTERM while the run waits at `step`; its stderr."""
    out = run_signalled(["fit", *args], cwd, step, signal.SIGTERM)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr[-3000:]
    return out.stderr


def assert_same_batches_from(resumed: Path, reference: Path, start: tuple[int, int],
                             pixels: bool, ranks: int = 1) -> None:
    for rank in range(ranks):
        ours, theirs = batches(resumed, rank), batches(reference, rank)
        assert sorted(ours) == sorted(theirs)  # every (epoch, batch) trained, none twice
        after = [key for key in sorted(theirs) if key >= start]
        assert after, "nothing trained after the resume"
        for key in after:
            a, b = ours[key], theirs[key]
            assert a["shape"] == b["shape"], (rank, key, "resolution")
            assert a["labels"] == b["labels"], (rank, key, "order")
            if pixels:
                assert a["checksum"] == pytest.approx(b["checksum"], rel=1e-9), (rank, key)


# -- FFCV with progressive resizing -----------------------------------------------------------
@pytest.fixture(scope="module")
def digit_betons(tmp_path_factory) -> list[str]:
    """The demo's digits as JPEG folders and betons (32 px images, as `make demo` writes them)."""
    from resnext_lit.data.beton import write_beton
    from resnext_lit.data.digits import export

    root = tmp_path_factory.mktemp("digits")
    export(str(root))
    paths = [str(write_beton(root / split, root / f"{split}.beton", workers=2,
                             progress=False).beton) for split in ("train", "val")]
    return ["--config", DEMO_FFCV, f"--data.init_args.train_path={paths[0]}",
            f"--data.init_args.val_path={paths[1]}", "--data.init_args.batch_size=16",
            "--data.init_args.res=32", "--data.init_args.val_res=32",
            "--trainer.callbacks+=resnext_lit.data.ffcv.ProgressiveResizing",
            "--trainer.callbacks.min_res=32", "--trainer.callbacks.max_res=64",
            "--trainer.callbacks.start_ramp=0", "--trainer.callbacks.end_ramp=1"]


@pytest.fixture(scope="module")
def ffcv_uninterrupted(tmp_path_factory, digit_betons) -> Path:
    cwd = tmp_path_factory.mktemp("ffcv_uninterrupted")
    fit(cwd, "--config", DEMO, *TINY, *digit_betons)
    seen = batches(cwd)
    assert {seen[e, 0]["shape"][-1] for e in range(EPOCHS)} == {32, 64}  # the schedule ran
    assert [seen[e, 0]["shape"][-1] for e in range(EPOCHS)] == [32, 64, 64]
    assert seen[0, 0]["labels"] != seen[2, 0]["labels"]  # epochs are reshuffled
    return cwd


@pytest.mark.slow
def test_ffcv_progressive_resizing_resumes_mid_epoch_and_at_an_epoch_boundary(
        tmp_path, digit_betons, ffcv_uninterrupted):
    """Preempted inside epoch 1 (after its second step), resumed until epoch 1 ends (max_steps),
    resumed again: the rest of epoch 1, and then epoch 2, train at 64 px with the batches the
    uninterrupted run had there (before the fix: 32 px in epoch 0's order)."""
    fit_stopped_at(tmp_path, STEPS + 2, "--config", DEMO, *TINY, *digit_betons)
    fit(tmp_path, "--config", DEMO, *TINY, *digit_betons, "--ckpt_path=last",
        f"--trainer.max_steps={2 * STEPS}")
    assert max(batches(tmp_path)) == (1, STEPS - 1)  # stopped at the epoch boundary
    fit(tmp_path, "--config", DEMO, *TINY, *digit_betons, "--ckpt_path=last")
    assert_same_batches_from(tmp_path, ffcv_uninterrupted, (1, 2), pixels=False)


# -- torch DataLoaders with worker processes, 2 DDP ranks --------------------------------------
DDP = ["--config", DEMO, *TINY, "--data.init_args.image_size=16",
       "--data.init_args.num_workers=2", "--data.init_args.batch_size=16",
       "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu"]


@pytest.mark.slow
def test_dataloader_workers_on_two_ranks_preempted_and_resumed(tmp_path_factory):
    """SIGTERM at step 5 (inside epoch 1): under DDP the ranks agree on it every
    `PREEMPTION_CHECK_EVERY_N_STEPS` steps and at each epoch's last step, so the run stops at the
    end of epoch 1 (step 8); resumed, epoch 2 gets its own order and augmentations on both ranks."""
    from resnext_lit.training.preemption import PREEMPTION_CHECK_EVERY_N_STEPS

    assert PREEMPTION_CHECK_EVERY_N_STEPS > STEPS  # so the epoch's end is the first agreement
    reference = tmp_path_factory.mktemp("ddp_uninterrupted")
    fit(reference, *DDP)
    assert batches(reference, 0)[0, 0]["labels"] != batches(reference, 1)[0, 0]["labels"]
    resumed = tmp_path_factory.mktemp("ddp_resumed")
    err = fit_stopped_at(resumed, STEPS + 1, *DDP)
    assert err.strip().splitlines()[-1].startswith(
        f"stopped by SIGTERM at epoch 2, step {2 * STEPS}: saved"), err[-3000:]
    fit(resumed, *DDP, "--ckpt_path=last")
    assert_same_batches_from(resumed, reference, (2, 0), pixels=True, ranks=2)
