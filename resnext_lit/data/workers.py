"""The processes behind `write-beton`: a parallel decoding scan, and FFCV's writer workers
under a watchdog.

    from resnext_lit.data.workers import scan, ffcv_write
    good, skipped, raw_bytes = scan(samples, max_side=500, workers=8, progress=True, desc="train")

FFCV's `DatasetWriter` waits forever for a worker that died (a full disk, an I/O error, a file
changed since the scan): `ffcv_write` watches the workers, stops the survivors and raises
`WriteFailed` with the worker's own error as one line (its traceback goes to a log, not the
terminal).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
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
DISK_FULL_ERRNOS = ("[Errno 28]", "[Errno 27]")  # ENOSPC; EFBIG (a file-size or quota limit)


class WriteFailed(RuntimeError):
    """An FFCV writer worker died; the message is its last error line."""


def quiet_worker() -> None:
    cv2.setNumThreads(1)  # parallelism comes from the processes; threads would oversubscribe
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


_writer_logs: str | None = None  # set while ffcv_write starts FFCV's workers


def _on_fork() -> None:
    """In each FFCV writer worker, at fork: FFCV gives no initializer, so this hook quiets it and
    sends its stderr (where multiprocessing prints a dying worker's traceback) to a log that the
    parent turns into one line."""
    if _writer_logs is not None:
        quiet_worker()
        sys.stderr = open(Path(_writer_logs) / f"{os.getpid()}.log", "w", buffering=1)


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
    """FFCV's writer waits forever for a worker that died (full disk, I/O error): this thread
    watches the workers and interrupts the main thread instead."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: dict[int, multiprocessing.Process] = {}
        self.dead: multiprocessing.Process | None = None
        self.done = threading.Event()
        # Created before FFCV starts its workers: older children are the caller's, not ours.
        self.older = {process.pid for process in multiprocessing.active_children()}

    def run(self) -> None:
        while not self.done.wait(WATCHDOG_PERIOD_S):
            for process in multiprocessing.active_children():
                if process.pid not in self.older:
                    self.seen.setdefault(process.pid, process)
            for process in self.seen.values():
                if process.exitcode not in (None, 0):
                    self.dead = process
                    # A real SIGINT to the main thread: it also breaks the blocking pipe read
                    # FFCV may be in (interrupt_main() would wait for that read to return).
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                    return

    def stop_workers(self) -> None:
        self.done.set()
        for process in self.seen.values():  # only FFCV's workers, by object, never by name
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


def _worker_failure(process: multiprocessing.Process, log_dir: str) -> WriteFailed:
    error = _last_error(Path(log_dir) / f"{process.pid}.log")
    if error is None:  # killed before it could print: a signal (the OOM killer sends 9)
        return WriteFailed(f"writer worker {process.pid} died with exit code {process.exitcode}")
    hint = " (disk full?)" if any(code in error for code in DISK_FULL_ERRNOS) else ""
    return WriteFailed(f"writer worker {process.pid} failed: {error}{hint}")


@contextmanager
def _ffcv_progress(enabled: bool):
    """FFCV's writer draws its own tqdm bar with no switch: ours is silent under --no-progress and
    closed on failure too (FFCV closes it only on success), so an error starts on its own line."""
    import ffcv.writer

    bars = []

    def bar(*args, **kwargs):
        bars.append(tqdm(*args, disable=not enabled, **kwargs))
        return bars[-1]

    ffcv.writer.tqdm = bar
    try:
        yield
    finally:
        ffcv.writer.tqdm = tqdm
        for made in bars:
            made.close()


def ffcv_write(partial_path: Path, records: BetonRecords, workers: int, fields: dict, page: int,
               progress: bool = True):
    from ffcv.writer import DatasetWriter

    writer = DatasetWriter(str(partial_path), fields, page_size=page, num_workers=workers)
    global _writer_logs
    log_dir = _writer_logs = tempfile.mkdtemp(prefix="resnext_lit_writer_")
    watchdog = _WorkerWatchdog()
    watchdog.start()
    completed = False
    try:
        with _ffcv_progress(progress):
            writer.from_indexed_dataset(records, chunksize=WRITE_CHUNK)
        completed = True
    except KeyboardInterrupt:
        if watchdog.dead is None:
            raise
        raise _worker_failure(watchdog.dead, log_dir) from None
    finally:
        _writer_logs = None
        watchdog.stop_workers()
        shutil.rmtree(log_dir, ignore_errors=True)
        memory = getattr(writer, "metadata_sm", None)
        if not completed and memory is not None and not isinstance(memory, int):
            memory.close()
            memory.unlink()  # FFCV unlinks it only on success
