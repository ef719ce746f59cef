"""Exact resume on the paths ImageNet runs take: FFCV betons (seeded crops and flips, progressive
resizing), a checkpoint that moves between world sizes, torch DataLoaders with worker processes
under 2-rank DDP.

    .venv/bin/python -m pytest -q tests/test_exact_resume.py

Runs are real `python -m resnext_lit fit`s: subprocesses where a run needs DDP, else
`resnext_lit.cli.main` in this process (a second of start-up instead of five; its signals are
real, raised by the run itself: `helpers.SignalAt`). `helpers.resume.RecordBatches` writes down
every training batch each rank receives: epoch, batch index, shape, labels, a checksum of the
pixels and a hash of each image. A run stopped inside an epoch or at its end and resumed with
`--ckpt_path last` must get, from the resume on, what the uninterrupted run got: the same
resolution, order and pixels, and in the end the same weights.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import run_env, run_signalled
from helpers.resume import (
    EPOCHS,
    PROGRESSIVE,
    STEPS,
    TINY,
    assert_same_weights,
    batches,
    final_weights,
    fit_here,
)

TIMEOUT_S = 600


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
                assert a["images"] == b["images"], (rank, key)


# -- FFCV: seeded crops and flips, progressive resizing ----------------------------------------
@pytest.mark.slow
def test_ffcv_fits_of_one_seed_end_with_the_same_weights_and_another_seed_differs(
        tmp_path, digit_betons, ffcv_uninterrupted):
    """Before: FFCV's crops and flips came from numba's unseeded per-thread generators."""
    again, other = tmp_path / "again", tmp_path / "other"
    fit_here(again, *TINY, *digit_betons, *PROGRESSIVE)
    fit_here(other, *TINY, *digit_betons, *PROGRESSIVE,
             "--seed_everything=1")
    assert_same_weights(final_weights(again), final_weights(ffcv_uninterrupted))
    assert batches(again) == batches(ffcv_uninterrupted)  # every pixel of every batch
    theirs = final_weights(other)
    assert any(not torch.equal(v, theirs[k]) for k, v in final_weights(again).items())
    assert batches(other)[0, 0]["images"] != batches(again)[0, 0]["images"]


@pytest.mark.slow
def test_ffcv_progressive_resizing_resumes_mid_epoch_and_at_an_epoch_boundary(
        tmp_path, digit_betons, ffcv_uninterrupted):
    """SIGTERM inside epoch 1 (after its second step), resumed until epoch 1 ends (max_steps),
    resumed again: the rest of epoch 1, and then epoch 2, train at 64 px on the very pixels of
    the uninterrupted run, which it ends with the weights of (before: 32 px in epoch 0's
    order; later, another crop of each image)."""
    args = [*TINY, *digit_betons, *PROGRESSIVE]
    fit_here(tmp_path, *args, "--trainer.callbacks+=helpers.SignalAt",
             f"--trainer.callbacks.step={STEPS + 2}",
             f"--trainer.callbacks.signum={int(signal.SIGTERM)}", status=128 + signal.SIGTERM)
    fit_here(tmp_path, *args, "--ckpt_path=last", f"--trainer.max_steps={2 * STEPS}")
    assert max(batches(tmp_path)) == (1, STEPS - 1)  # stopped at the epoch boundary
    fit_here(tmp_path, *args, "--ckpt_path=last")
    assert_same_batches_from(tmp_path, ffcv_uninterrupted, (1, 2), pixels=True)
    assert_same_weights(final_weights(tmp_path), final_weights(ffcv_uninterrupted))


# -- one order on any number of processes ------------------------------------------------------
# The ranks agree on a signal every 2 steps, so a DDP run stops mid-epoch.
AGREE_EVERY_2 = "--builtins.preemption.init_args.check_every_n_steps=2"
# loader -> (arguments, global batch, steps per epoch, epochs): the torch DataLoader without a
# crop, so an image's pixels name it; FFCV as `ffcv_uninterrupted` trains (its reference).
WORLDS = {"torch": (["--data.init_args.image_size=16", "--data.init_args.padding=0",
                     "--data.init_args.num_workers=2", "--trainer.max_epochs=2",
                     "--trainer.limit_train_batches=6"], 32, 6, 2),
          "ffcv": (None, 16, STEPS, EPOCHS)}


def steps_of(cwd: Path, ranks: int) -> dict[tuple[int, int], list[str]]:
    """(epoch, step) -> the images every rank trained on in it, in rank order."""
    records = [batches(cwd, rank) for rank in range(ranks)]
    steps = {}
    for key in sorted(records[0]):
        # A step of a 2-process piece has a line per rank; a step of one process has one.
        same = [r[key] for r in records if key in r and r[key]["shape"] == records[0][key]["shape"]]
        steps[key] = [image for line in same for image in line["images"]]
    return steps


@pytest.mark.slow
@pytest.mark.parametrize("loader", WORLDS)
def test_a_mid_epoch_checkpoint_moves_from_1_process_to_2_and_back(loader, tmp_path, request):
    """SIGTERM at step 2 on one process; resumed on 2 DDP ranks (gloo), stopped there inside
    epoch 1; resumed on one process to the end. Every step trains the images the
    uninterrupted one-process run trained in it, each image once per epoch (before: refused).
    On FFCV across progressive resizing's change of resolution too."""
    data, batch, steps, epochs = WORLDS[loader]
    resumed = tmp_path / "resumed"
    if data is None:  # the reference trained 16 a step on one process
        args = [*TINY, *request.getfixturevalue("digit_betons"), *PROGRESSIVE,
                f"--global_batch_size={batch}", AGREE_EVERY_2]
        reference = request.getfixturevalue("ffcv_uninterrupted")
    else:
        args = [*TINY, *data, f"--global_batch_size={batch}", AGREE_EVERY_2]
        reference = tmp_path / "reference"
        fit_here(reference, *args)
    fit_here(resumed, *args, "--trainer.callbacks+=helpers.SignalAt",
             "--trainer.callbacks.step=2", f"--trainer.callbacks.signum={int(signal.SIGTERM)}",
             status=128 + signal.SIGTERM)
    stop = steps + 2  # two steps into epoch 1: the agreement after the signal at steps + 1
    two = run_signalled(["fit", *args, "--ckpt_path=last", "--run_root", str(resumed / "runs"),
                         "--trainer.devices=2", "--trainer.strategy=ddp",
                         "--trainer.accelerator=cpu"], resumed, stop - 1, signal.SIGTERM)
    assert two.returncode == 128 + signal.SIGTERM, two.stderr[-3000:]
    assert (f"resume: {batch // 2} images per device on 2 process(es), {batch} on the "
            "checkpoint's 1 (BatchNorm's batch changes)") in two.stderr
    assert f"stopped by SIGTERM at epoch 1, step {stop}" in two.stderr
    fit_here(resumed, *args, "--ckpt_path=last")
    ours, theirs = steps_of(resumed, 2), steps_of(reference, 1)
    assert sorted(ours) == sorted(theirs) and len(ours) == steps * epochs
    for key, images in theirs.items():
        assert sorted(ours[key]) == sorted(images), key  # the step's images, whoever had them
    for epoch in range(epochs):  # each image once an epoch
        seen = [image for (e, _), images in ours.items() if e == epoch for image in images]
        assert len(seen) == len(set(seen)) == steps * batch


# -- torch DataLoaders with worker processes, 2 DDP ranks --------------------------------------
DDP = [*TINY, "--data.init_args.image_size=16",
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
