"""The processes behind `write-beton`: a parallel decoding scan, and FFCV's writer in a child
process of its own.

    from resnext_lit.data.workers import scan, ffcv_write
    good, skipped, raw_bytes = scan(samples, max_side=500, workers=8, progress=True, desc="train")

FFCV's `DatasetWriter` waits forever for a worker that died (a full disk, an I/O error), and an
interrupt landing inside it can be swallowed (a bare `except:`) or leave its queues hanging the
exit. So `ffcv_write` runs it in a writer process and only waits: Ctrl-C or an error stops that
process, whose FFCV workers die with it, and a dead worker's error comes back as one line
(`WriteFailed`); tracebacks go to logs, not the terminal.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .images import BadImage, load_rgb

FFCV_DEFAULT_PAGE = 8 << 20  # DatasetWriter's default page; pages must hold the largest record
JPEG_BYTES_PER_RAW_BYTE = 0.25  # generous for quality 90: only sizes the free-space check
SCAN_CHUNK, WRITE_CHUNK = 64, 100  # files per task handed to a worker
WATCHDOG_PERIOD_S = 0.05
STOP_GRACE_S = 10  # for the writer process to stop its workers before it is killed
PR_SET_PDEATHSIG = 1  # prctl(2)
DISK_FULL_ERRNOS = ("[Errno 28]", "[Errno 27]")  # ENOSPC; EFBIG (a file-size or quota limit)


class WriteFailed(RuntimeError):
    """The FFCV writer failed; the message is its (or its dead worker's) last error line."""


def quiet_worker() -> None:
    cv2.setNumThreads(1)  # parallelism comes from the processes; threads would oversubscribe
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so a killed write leaves no orphans."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: orphans finish their chunk and exit
        pass


_worker_logs: str | None = None  # set in the writer process, before FFCV forks its workers


def _on_fork() -> None:
    """In each FFCV worker, at fork (FFCV takes no initializer): quiet it, tie it to the writer
    process, and send its stderr, where a dying worker's traceback goes, to a log."""
    if _worker_logs is not None:
        quiet_worker()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the writer's handler: just stop
        die_with_parent()
        sys.stderr = open(Path(_worker_logs) / f"{os.getpid()}.log", "w", buffering=1)


os.register_at_fork(after_in_child=_on_fork)


def _probe(path: str, max_side: int) -> tuple[str | None, int]:
    try:
        return None, load_rgb(path, max_side).nbytes
    except BadImage as err:
        return str(err), 0


def scan(samples, max_side, workers, progress, desc):
    """Decode every file once, in parallel: (good samples, skipped (path, reason), raw bytes)."""
    good, skipped, raw_bytes = [], [], 0
    with multiprocessing.get_context("fork").Pool(workers, initializer=quiet_worker) as pool:
        results = pool.imap(partial(_probe, max_side=max_side), [p for p, _ in samples],
                            chunksize=SCAN_CHUNK)
        bar = tqdm(results, total=len(samples), desc=f"scan {desc}", disable=not progress,
                   unit="img")
        for (reason, nbytes), (path, label) in zip(bar, samples):  # bar first: it sees the end
            if reason is None:
                good.append((path, label))
                raw_bytes += nbytes
            else:
                skipped.append((path, reason))
    return good, skipped, raw_bytes


class BetonRecords:
    """The indexable dataset FFCV's writer workers read: (RGB array, label) per good file."""

    def __init__(self, samples, max_side: int, seed: int):
        self.samples, self.max_side, self.seed = samples, max_side, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        # `proportion` mode draws JPEG-or-raw from NumPy's global RNG in the worker: seeding per
        # record makes that choice reproducible whatever worker handles the record.
        np.random.seed((self.seed * 1_000_003 + i) % 2**32)
        path, label = self.samples[i]
        return load_rgb(path, self.max_side), label  # the scan decoded it: a failure is fatal


class _WorkerWatchdog(threading.Thread):
    """In the writer process: FFCV waits forever for a worker that died, so this thread watches
    the workers and stops the writer's main thread (SIGTERM) when one does."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: dict[int, multiprocessing.Process] = {}
        self.dead: multiprocessing.Process | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(WATCHDOG_PERIOD_S):
            for process in multiprocessing.active_children():  # only FFCV's, in this process
                self.seen.setdefault(process.pid, process)
            for process in self.seen.values():
                if process.exitcode not in (None, 0):
                    self.dead = process
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
                    return

    def stop_workers(self) -> None:
        self.done.set()
        self.join()  # no signal from this thread after this point
        for process in self.seen.values():
            if process.is_alive():
                process.terminate()
                process.join()


def page_size(max_side: int) -> int:
    page = FFCV_DEFAULT_PAGE
    while page < 2 * max_side * max_side * 3:  # a raw record must fit in one page
        page *= 2
    return page


def check_free_space(beton: Path, raw_bytes: int, jpeg_share: float, workers: int, page: int):
    needed = raw_bytes * (1 - jpeg_share + jpeg_share * JPEG_BYTES_PER_RAW_BYTE) + workers * page
    free = shutil.disk_usage(beton.parent).free
    if free < needed:
        raise ValueError(f"{beton.parent} has {free / 1e9:.1f} GB free; {beton.name} needs "
                         f"about {needed / 1e9:.1f} GB")


def _last_error(log: Path) -> str | None:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [line for line in lines if line.strip() and not line.startswith((" ", "Process"))]
    return errors[-1] if errors else None


def _worker_failure(process: multiprocessing.Process, log_dir: str) -> str:
    error = _last_error(Path(log_dir) / f"{process.pid}.log")
    if error is None:  # killed before it could print: a signal (the OOM killer sends 9)
        return f"writer worker {process.pid} died with exit code {process.exitcode}"
    hint = " (disk full?)" if any(code in error for code in DISK_FULL_ERRNOS) else ""
    return f"writer worker {process.pid} failed: {error}{hint}"


class _Stop:
    """SIGTERM in the writer process (from the parent, or the watchdog): SystemExit, except
    while FFCV creates its shared memory, where an exception would leak it in /dev/shm."""

    def __init__(self, watchdog: _WorkerWatchdog):
        self.watchdog, self.holding, self.pending = watchdog, False, None

    def __call__(self, signum: int, frame=None) -> None:
        if self.holding:
            self.pending = signum
            return
        raise SystemExit(1 if self.watchdog.dead is not None else 128 + signum)

    @contextmanager
    def held(self):
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending is not None:
            self(self.pending)


def _writer_process(partial_path: Path, records: BetonRecords, workers: int, fields: dict,
                    page: int, progress: bool, log_dir: str, go, parent: int) -> None:
    """The child: FFCV's DatasetWriter and its workers. Exits 0 written, 1 failed (the reason in
    `log_dir/failure`), 143 stopped by the parent."""
    import ffcv.writer

    global _worker_logs
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # Start nothing until the parent holds this process: a Ctrl-C inside its `start()` would
    # otherwise orphan a write (and FFCV's shared memory) it can no longer stop.
    while not go.wait(1):
        if os.getppid() != parent:
            os._exit(1)
    watchdog = _WorkerWatchdog()
    stop = _Stop(watchdog)

    class Writer(ffcv.writer.DatasetWriter):
        def prepare(self):  # creates the file and FFCV's shared memory
            with stop.held():
                super().prepare()

    signal.signal(signal.SIGTERM, stop)
    terminal, sys.stderr = sys.stderr, open(Path(log_dir) / "writer.log", "w", buffering=1)
    bars = []  # FFCV draws its bar with no switch: ours obeys --no-progress, on the terminal

    def bar(*args, **kwargs):
        bars.append(tqdm(*args, disable=not progress, file=terminal, **kwargs))
        return bars[-1]

    ffcv.writer.tqdm = bar
    writer = Writer(str(partial_path), fields, page_size=page, num_workers=workers)
    code = 0
    try:
        _worker_logs = log_dir
        watchdog.start()
        writer.from_indexed_dataset(records, chunksize=WRITE_CHUNK)
    except SystemExit as stopped:
        code = stopped.code
    except BaseException:
        traceback.print_exc()  # into writer.log; the parent prints its last line
        code = 1
    finally:
        watchdog.stop_workers()
        for made in bars:
            made.close()  # FFCV closes it only on success: an error starts on its own line
    if code == 0:
        return
    if watchdog.dead is not None:
        (Path(log_dir) / "failure").write_text(_worker_failure(watchdog.dead, log_dir))
    memory = getattr(writer, "metadata_sm", None)
    if memory is not None and not isinstance(memory, int):
        memory.unlink()  # FFCV unlinks it only on success (no close: FFCV's arrays still view it)
    sys.stderr.flush()
    os._exit(code)  # not through exit handlers: FFCV's queues may hold work for dead workers


def ffcv_write(partial_path: Path, records: BetonRecords, workers: int, fields: dict, page: int,
               progress: bool = True) -> None:
    """Write `records` to `partial_path` in a writer process; raise `WriteFailed` with one line
    if it fails, and stop it (and its workers) on Ctrl-C or any other exception here."""
    log_dir = tempfile.mkdtemp(prefix="resnext_lit_writer_")
    context = multiprocessing.get_context("fork")
    go = context.Event()
    child = context.Process(target=_writer_process, name="beton-writer", args=(
        partial_path, records, workers, fields, page, progress, log_dir, go, os.getpid()))
    try:
        child.start()
        go.set()
        child.join()
        if child.exitcode != 0:
            failure = Path(log_dir) / "failure"
            raise WriteFailed(failure.read_text() if failure.exists() else
                              _last_error(Path(log_dir) / "writer.log") or
                              f"the writer process exited with code {child.exitcode}")
    finally:
        if child.is_alive():  # interrupted: let it clean up, then make sure
            child.terminate()
            child.join(STOP_GRACE_S)
            if child.is_alive():
                child.kill()
                child.join()
        shutil.rmtree(log_dir, ignore_errors=True)
