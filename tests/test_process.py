"""A process left as it was found: signal handlers, environment, warning filters and torch
flags after in-process runs; pools that stop.

    .venv/bin/python -m pytest -q tests/test_process.py

The runs are in-process (`resnext_lit.cli.main`), as a notebook, `wandb.agent(function=...)` or
a user's own test calls them: tiny network, embedded digits, a few steps on CPU.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import Callback

from resnext_lit.bench.loader import DecodeCeiling
from resnext_lit.cli import main
from resnext_lit.data.beton.processes import process_context
from resnext_lit.pools import WorkerPool
from resnext_lit.process import CATCHABLE

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
TINY = ["--config", DEMO, "--model.depth=11", "--model.cardinality=2",
        "--model.bottleneck_width=2", "--data.init_args.image_size=16",
        "--trainer.enable_progress_bar=false", "--model.warmup_epochs=0",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
        "--trainer.limit_predict_batches=1"]
CLOSE_TIMEOUT_S = 120  # a pool's close is bounded by seconds; this only catches a hang


# -- hooks the in-process runs load (`--trainer.callbacks+=test_process.X`) -------------------
class FailAt(Callback):
    """A bug in the middle of training: an exception at step `step`."""

    def __init__(self, step: int = 1):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("planted failure")


def _mine(signum, frame) -> None:
    """A caller's own handler, so 'as it was' is a handler nobody else would install."""


@pytest.fixture
def own_handlers(monkeypatch, tmp_path):
    """The caller's handlers for SIGTERM and SIGUSR1, put back after the test whatever it did;
    runs land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    found = {signum: signal.getsignal(signum) for signum in CATCHABLE}
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, _mine)
    yield
    for signum, handler in found.items():
        if handler is not None:
            signal.signal(signum, handler)


def handlers() -> dict:
    return {signum: signal.getsignal(signum) for signum in CATCHABLE}


def process_state() -> dict:
    """What else a run may change in its process: environment, warning filters, torch flags."""
    return {"environ": dict(os.environ), "warning filters": list(warnings.filters),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
            "matmul": torch.get_float32_matmul_precision()}


ENDINGS = {
    "finished": ([], 0),
    "preempted": (["--trainer.callbacks+=helpers.SignalAt"], 128 + signal.SIGUSR1),
    "failed": (["--trainer.callbacks+=test_process.FailAt"], RuntimeError),
}


@pytest.mark.slow
@pytest.mark.parametrize("ending", ENDINGS)
def test_fit_in_process_leaves_every_signal_handler_as_it_was(ending, own_handlers):
    before, state = handlers(), process_state()
    extra, expected = ENDINGS[ending]
    # deterministic: Lightning then sets torch's flag and CUBLAS_WORKSPACE_CONFIG for good.
    argv = ["fit", *TINY, "--trainer.deterministic=true", *extra]
    if isinstance(expected, int):
        assert main(argv) == expected
    else:
        with pytest.raises(expected, match="planted failure"):
            main(argv)
    assert process_state() == state
    after = handlers()
    assert {signal.Signals(s).name: after[s] for s in after if after[s] != before[s]} == {}
    assert signal.getsignal(signal.SIGTERM) is _mine  # the three the issue names, by name
    assert signal.getsignal(signal.SIGUSR1) is _mine
    assert signal.getsignal(signal.SIGINT) == before[signal.SIGINT]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A checkpoint of the tiny network (an in-process fit), for the evaluations."""
    root = tmp_path_factory.mktemp("trained")
    assert main(["fit", *TINY, "--run_root", str(root)]) == 0
    (checkpoint,) = root.rglob("last.ckpt")
    return checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_evaluation_in_process_leaves_every_signal_handler_as_it_was(stage, trained,
                                                                       own_handlers):
    before, state = handlers(), process_state()
    assert main([stage, *TINY, "--ckpt_path", str(trained)]) == 0
    assert handlers() == before
    assert process_state() == state


def fake_record(i: int, decode) -> np.ndarray:
    """A record for the decode ceiling's workers (inherited by fork): a small RGB image."""
    return np.full((40, 48, 3), i % 255, np.uint8)


def closes_within(close, seconds: float) -> bool:
    done = threading.Thread(target=close, daemon=True)
    done.start()
    done.join(seconds)
    return not done.is_alive()


@pytest.mark.slow
def test_bench_pool_stops_after_a_preempted_fit_in_the_same_process(own_handlers, tmp_path):
    """The hang seen in `make test`: a pool forked after an in-process fit that a signal stopped
    inherited the stop handler (which ignores SIGTERM once stopped), and its `close()` waited
    for ever on a worker that survived the pool's SIGTERM. Here both workers are busy when the
    pool closes, so none can leave on its own (idle ones sometimes do)."""
    assert main(["fit", *TINY, "--trainer.callbacks+=helpers.SignalAt"]) == 138
    ceiling = DecodeCeiling(fake_record, 32, workers=2, batch_size=8, res=16)
    assert ceiling.epoch() > 0
    flags = [tmp_path / "busy0", tmp_path / "busy1"]
    ceiling.pool.map_async(busy, [str(flag) for flag in flags], chunksize=1)
    deadline = time.monotonic() + CLOSE_TIMEOUT_S
    while not all(flag.exists() for flag in flags) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert closes_within(ceiling.close, CLOSE_TIMEOUT_S)


def ignore_sigterm() -> None:
    """A worker that will not die of SIGTERM (a stuck one, or a library's handler)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def sigterm_action(pid: int) -> str:
    """What process `pid` does with SIGTERM, as the kernel says (/proc/PID/status)."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    bit = 1 << (signal.SIGTERM - 1)
    return ("ignored" if int(status["SigIgn"], 16) & bit else
            "caught" if int(status["SigCgt"], 16) & bit else "default")


def busy(flag: str) -> None:
    """A task that never ends by itself (a stuck decode, a hung read)."""
    Path(flag).touch()
    time.sleep(3600)


def all_busy(pool: WorkerPool, folder: Path, timeout: float = 60) -> bool:
    """Give each worker a never-ending task; True once every one has started its task."""
    flags = [str(folder / f"busy{i}") for i in range(len(pool.workers))]
    pool.pool.map_async(busy, flags, chunksize=1)
    deadline = time.monotonic() + timeout
    while not all(Path(flag).exists() for flag in flags) and time.monotonic() < deadline:
        time.sleep(0.05)
    return all(Path(flag).exists() for flag in flags)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_busy_pool_workers_die_of_sigterm_even_when_the_caller_ignores_it(method, tmp_path):
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # fork copies it, exec keeps it
    try:
        # The beton writer's forkserver context, as a test of it would start the server.
        context = process_context() if method == "forkserver" else multiprocessing.get_context()
        pool = WorkerPool(context, 2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert all_busy(pool, tmp_path)
    assert [sigterm_action(worker.pid) for worker in pool.workers] == ["default"] * 2
    assert closes_within(lambda: pool.close(grace_s=60), CLOSE_TIMEOUT_S)
    assert [worker.exitcode for worker in pool.workers] == [-signal.SIGTERM] * 2


def test_a_busy_worker_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    pool = WorkerPool(multiprocessing.get_context("fork"), 2, initializer=ignore_sigterm)
    assert all_busy(pool, tmp_path)
    assert [sigterm_action(worker.pid) for worker in pool.workers] == ["ignored"] * 2
    assert closes_within(lambda: pool.close(grace_s=1), CLOSE_TIMEOUT_S)
    assert [worker.exitcode for worker in pool.workers] == [-signal.SIGKILL] * 2


HUNG_FILE = '''
import threading, pytest

@pytest.mark.timeout(2)
def test_hangs():
    stuck = threading.Event()
    threading.Thread(target=stuck.wait, name="a-helper-thread", daemon=True).start()
    stuck.wait()  # for ever

def test_after_the_hang():
    pass
'''


@pytest.mark.slow
def test_a_hung_test_fails_at_its_timeout_and_the_rest_of_its_file_still_runs(tmp_path):
    """The suite's own guard, with its settings (pyproject.toml) and make test's scheduling:
    the hung test fails with every thread's stack, the next test of the file still runs."""
    (tmp_path / "test_hung.py").write_text(HUNG_FILE)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "1", "--dist",
                           "loadfile", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
                           str(tmp_path), "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "1 failed, 1 passed" in done.stdout, done.stdout[-3000:]
    assert "Timeout (>2.0s) from pytest-timeout" in done.stdout
    assert "Stack of a-helper-thread" in done.stdout  # the other threads' stacks too
