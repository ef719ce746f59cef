"""What several test files share: the environment of a training subprocess, a run stopped by a
real signal at a known step, and the calls that read a tensor back from the device.

    from helpers import DEVICE_READS, ROOT, SignalAt, run_env, run_signalled

Subprocesses load callbacks from here and from test modules through PYTHONPATH
(`--trainer.callbacks+=helpers.PauseAtStep`).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch
from lightning import Callback

from resnext_lit.training.preemption import Preemption

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]
SIGNAL_TIMEOUT_S = 600

# The calls that, on a GPU, wait for the device: a tensor read back to the host.
DEVICE_READS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__,
                torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.tolist,
                torch.Tensor.numpy, torch.Tensor.cpu, torch.unique, torch.Tensor.unique,
                torch.nonzero, torch.Tensor.nonzero}


def ctrl_c_enabled() -> None:
    """`preexec_fn` of a child the test sends SIGINT (a Ctrl-C): a suite started in the
    background by a shell (as CI may be) inherits SIGINT ignored, and so would the child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_env(tmp: Path, **extra) -> dict:
    """A training subprocess's environment: the tests on PYTHONPATH (their callbacks), W&B
    offline with every folder of its in `tmp`, plus `extra`."""
    env = dict(os.environ, PYTHONPATH=str(TESTS), WANDB_MODE="offline",
               WANDB_DIR=str(tmp / "wandb"), WANDB_CACHE_DIR=str(tmp / "wandb-cache"),
               WANDB_CONFIG_DIR=str(tmp / "wandb-config"), WANDB_DATA_DIR=str(tmp / "wandb-data"))
    return {**env, **extra}


class PauseAtStep(Callback):
    """At `step`, write `ready` and wait until `go` exists: the test signals the run meanwhile.
    `only_if`: "NAME=value", pause only in a process whose environment has it (one array task).
    `signalled`: then also wait until the run's `Preemption` has the signal, for a signal that
    travels on its own (SLURM: `scancel`/`scontrol` return before slurmstepd sends it).

    User callbacks run before the repo's own, so `Preemption` sees the signal at the end of this
    very step."""

    def __init__(self, step: int, folder: str = ".", only_if: str | None = None,
                 signalled: bool = False):
        self.step, self.folder, self.signalled = step, Path(folder), signalled
        name, _, value = (only_if or "").partition("=")  # e.g. SLURM_ARRAY_TASK_ID=0
        self.active = not only_if or os.environ.get(name) == value

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.active and trainer.global_step == self.step:
            (self.folder / "ready").write_text(str(os.getpid()))
            stop = time.monotonic() + SIGNAL_TIMEOUT_S
            while not (self.folder / "go").exists() and time.monotonic() < stop:
                time.sleep(0.02)
            preemption = next((c for c in trainer.callbacks if isinstance(c, Preemption)), None)
            while (self.signalled and preemption is not None and preemption._signal is None
                   and time.monotonic() < stop):
                time.sleep(0.02)


class SignalAt(Callback):
    """Send this process `signum` at the end of training step `step`: a real signal, raised
    by the process itself (an in-process run needs no second process to signal it)."""

    def __init__(self, step: int = 1, signum: int = signal.SIGUSR1):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            signal.raise_signal(self.signum)


def run_signalled(args: list[str], cwd: Path, step: int, sig: int,
                  env: dict | None = None, to_step: bool = False) -> subprocess.CompletedProcess:
    """`python -m resnext_lit *args` in `cwd`, sent `sig` from this process while it waits at
    `step` (`PauseAtStep`), so where the signal lands is exact and never races the training.
    `to_step`: to the run and every process it started (loader workers, W&B's service in its
    own session), as SLURM signals a job step (`scontrol requeue`, proctrack/linuxproc)."""
    proc = subprocess.Popen([sys.executable, "-m", "resnext_lit", *args,
                             "--trainer.callbacks+=helpers.PauseAtStep",
                             f"--trainer.callbacks.step={step}"], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env or run_env(cwd))
    try:
        stop = time.monotonic() + SIGNAL_TIMEOUT_S
        while not (cwd / "ready").exists() and proc.poll() is None and time.monotonic() < stop:
            time.sleep(0.05)
        assert (cwd / "ready").exists(), proc.communicate()[1][-3000:]
        for pid in descendants(proc.pid) if to_step else [proc.pid]:
            os.kill(pid, sig)
        (cwd / "go").touch()
        out, err = proc.communicate(timeout=SIGNAL_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    (cwd / "ready").unlink()
    (cwd / "go").unlink()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, found through /proc's parent links."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found = [pid]
    for candidate in found:
        found += [child for child, parent in parents.items() if parent == candidate]
    return found


def wandb_records(path: Path) -> list:
    """Records of a .wandb file, read as W&B writes it (LevelDB log format: 32 KiB blocks of
    CRC-32-checked chunks, each record a `wandb_internal_pb2.Record`). Fails on a torn record."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), "not a .wandb file"
    records, pos, parts = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's trailer
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if (crc, length, kind) == (0, 0, 0):
            pos += block - pos % block
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert len(chunk) == length and kind in (1, 2, 3, 4), f"torn record at byte {pos}"
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"bad checksum at {pos}"
        parts, pos = parts + chunk, pos + 7 + length
        if kind in (1, 4):  # FULL or LAST
            records.append(wandb_internal_pb2.Record.FromString(parts))
            parts = b""
    return records
