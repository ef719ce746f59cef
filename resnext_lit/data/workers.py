"""The processes behind `write-beton`: a parallel decoding scan, and FFCV's writer workers
under a watchdog.

    from resnext_lit.data.workers import scan, ffcv_write
    good, skipped, raw_bytes = scan(samples, max_side=500, workers=8, progress=True, desc="train")

FFCV's `DatasetWriter` waits forever for a worker that died (a full disk, an I/O error, a file
changed since the scan): `ffcv_write` watches the workers, stops the survivors and raises.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import threading
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


def quiet_worker() -> None:
    cv2.setNumThreads(1)  # parallelism comes from the processes; threads would oversubscribe
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


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
        for (path, label), (reason, nbytes) in zip(samples, bar):
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
        self.parent = os.getpid()
        self._quiet = False

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        if not self._quiet and os.getpid() != self.parent:
            quiet_worker()
            self._quiet = True
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


def ffcv_write(partial_path: Path, records: BetonRecords, workers: int, fields: dict, page: int):
    from ffcv.writer import DatasetWriter

    writer = DatasetWriter(str(partial_path), fields, page_size=page, num_workers=workers)
    watchdog = _WorkerWatchdog()
    watchdog.start()
    completed = False
    try:
        writer.from_indexed_dataset(records, chunksize=WRITE_CHUNK)
        completed = True
    except KeyboardInterrupt:
        if watchdog.dead is None:
            raise
        raise RuntimeError(f"FFCV writer worker {watchdog.dead.pid} died with exit code "
                           f"{watchdog.dead.exitcode} (its traceback is above)") from None
    finally:
        watchdog.stop_workers()
        memory = getattr(writer, "metadata_sm", None)
        if not completed and memory is not None and not isinstance(memory, int):
            memory.close()
            memory.unlink()  # FFCV unlinks it only on success
