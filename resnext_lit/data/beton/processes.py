"""The processes behind `write-beton`: a parallel decoding scan, and FFCV's writer in a child
process of its own.

    from resnext_lit.data.beton.processes import scan, ffcv_write, estimate_size
    found = scan(samples, max_side=500, workers=8, progress=True, desc="train", jpeg_quality=90)
    found.good, found.skipped                  # [(path, label)], [(path, reason)]
    estimate_size(found, jpeg_share=0.5, workers=8, page=page_size(500))   # bytes of the .beton

FFCV's `DatasetWriter` waits forever for a worker that died (a full disk, an I/O error), and an
interrupt landing inside it can be swallowed (a bare `except:`) or leave its queues hanging the
exit. So `ffcv_write` runs it in a writer process and only waits: Ctrl-C or an error stops that
process, whose FFCV workers die with it, and a dead worker's error comes back as one line
(`WriteFailed`); tracebacks go to logs, not the terminal.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import reduction
from pathlib import Path

import cv2
import numpy as np
from ffcv.fields import IntField, RGBImageField
from ffcv.fields.rgb_image import encode_jpeg
from ffcv.types import ALLOC_TABLE_TYPE, FieldDescType, HeaderType, get_metadata_type
from tqdm import tqdm

from ...pools import STOP_GRACE_S, WorkerPool, default_stop_signals
from ..images import BadImage, load_rgb

FFCV_DEFAULT_PAGE = 8 << 20  # DatasetWriter's default page; pages must hold the largest record
JPEG_SAMPLE_EVERY = 16  # the scan JPEG-encodes every 16th image to measure the JPEG/raw ratio
SCAN_CHUNK, WRITE_CHUNK = 64, 100  # files per task handed to a worker
WATCHDOG_PERIOD_S = 0.05
PR_SET_PDEATHSIG = 1  # prctl(2)
DISK_FULL_ERRNOS = ("[Errno 28]", "[Errno 27]")  # ENOSPC; EFBIG (a file-size or quota limit)


class WriteFailed(RuntimeError):
    """The FFCV writer failed; the message is its (or its dead worker's) last error line."""


def quiet_worker() -> None:
    cv2.setNumThreads(1)  # parallelism comes from the processes; threads would oversubscribe
    default_stop_signals()  # SIGTERM stops it; Ctrl-C is the main process's to handle


def process_context():
    """The processes here start from a forkserver, not by forking the caller: a fork copies
    only the calling thread, with every lock other threads held at that instant (pytest-xdist's
    execnet threads, a notebook's, a Lightning process's), and a child that needs one waits for
    ever (seen: a writer child stuck on a futex under xdist). Python 3.14 made forkserver
    Linux's default for this reason. The server imports this module once; its children fork
    from that clean, single-threaded process, so each starts in milliseconds."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # no effect once this process's server runs
    return context


class CallerStream:
    """The caller's stdout or stderr, for a forkserver child: it would otherwise inherit the
    server's, fixed when the server started (another test's capture, a closed terminal)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):  # pickled while the child starts: multiprocessing passes the fd over
        return _attach_stream, (self.fd, reduction.DupFd(self.fd))


def _attach_stream(fd: int, passed) -> None:
    received = passed.detach()
    os.dup2(received, fd)
    os.close(received)


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so a killed write leaves no orphans."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: orphans finish their chunk and exit
        pass


_worker_logs: str | None = None  # set in the writer process, before FFCV forks its workers


def _on_fork() -> None:
    """In each FFCV worker, at fork (FFCV takes no initializer): quiet it, tie it to the writer
    process, and send its stderr, where a dying worker's traceback goes, to a log. Runs because
    ffcv 1.0.2 starts its workers with multiprocessing's default context, fork on Linux up to
    Python 3.13 (tests/test_internals_data.py)."""
    if _worker_logs is not None:
        quiet_worker()  # SIGTERM stops it (not the writer's handler)
        die_with_parent()
        sys.stderr = open(Path(_worker_logs) / f"{os.getpid()}.log", "w", buffering=1)


os.register_at_fork(after_in_child=_on_fork)


def _probe(task: tuple[int, str], max_side: int, jpeg_quality: int | None):
    """(reason or None, raw bytes, JPEG bytes or 0) of one file: JPEG only for a sample."""
    index, path = task
    try:
        rgb = load_rgb(path, max_side)
    except BadImage as err:
        return str(err), 0, 0
    if jpeg_quality is None or index % JPEG_SAMPLE_EVERY:
        return None, rgb.nbytes, 0
    return None, rgb.nbytes, encode_jpeg(rgb, jpeg_quality).nbytes  # FFCV's own encoder


@dataclass
class Scanned:
    """What a scan found: the decodable samples, the skipped (path, reason), the bytes of the
    good images as raw pixels (h x w x 3 after the max-side resize), and a JPEG sample."""

    good: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    raw_bytes: int = 0
    sample_raw_bytes: int = 0  # of the images JPEG-encoded in the scan ...
    sample_jpeg_bytes: int = 0  # ... and their size as JPEG at the write's quality

    def add(self, other: Scanned) -> None:
        self.good += other.good
        self.skipped += other.skipped
        self.raw_bytes += other.raw_bytes
        self.sample_raw_bytes += other.sample_raw_bytes
        self.sample_jpeg_bytes += other.sample_jpeg_bytes


def scan(samples, max_side, workers, progress, desc, jpeg_quality: int | None = None) -> Scanned:
    """Decode every file once, in parallel; with `jpeg_quality`, also JPEG-encode every
    `JPEG_SAMPLE_EVERY`-th one (about 1/16 more work) so the output size can be estimated."""
    found = Scanned()
    with WorkerPool(process_context(), workers, initializer=quiet_worker) as pool:
        results = pool.imap(partial(_probe, max_side=max_side, jpeg_quality=jpeg_quality),
                            enumerate(path for path, _ in samples), chunksize=SCAN_CHUNK)
        bar = tqdm(results, total=len(samples), desc=f"scan {desc}", disable=not progress,
                   unit="img")
        for (reason, nbytes, jpeg_bytes), (path, label) in zip(bar, samples):  # bar first
            if reason is None:
                found.good.append((path, label))
                found.raw_bytes += nbytes
                if jpeg_bytes:
                    found.sample_raw_bytes += nbytes
                    found.sample_jpeg_bytes += jpeg_bytes
            else:
                found.skipped.append((path, reason))
    return found


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
    the workers and stops the writer's main thread (SIGTERM) when one does.

    A worker is known from the log `_on_fork` opens for it at fork, before it can fail, and not
    from `multiprocessing.active_children()` alone: that call (and FFCV's next `Process.start`)
    reaps a worker that died between two looks, and such a worker was never seen. Its exit
    status may be gone then, but its traceback is in its log, written before it exits.
    """

    def __init__(self, log_dir: str):
        super().__init__(daemon=True)
        self.log_dir = Path(log_dir)
        self.seen: dict[int, multiprocessing.Process] = {}
        self.dead: tuple[int, int | None] | None = None  # (pid, exit code if known)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(WATCHDOG_PERIOD_S):
            self.dead = self._find_dead()
            if self.dead is not None:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
                return

    def _find_dead(self) -> tuple[int, int | None] | None:
        for process in multiprocessing.active_children():  # only FFCV's, in this process
            self.seen.setdefault(process.pid, process)
        for process in self.seen.values():
            if process.exitcode not in (None, 0):  # a signal: the OOM killer, a kill -9
                return process.pid, process.exitcode
        for log in self.log_dir.glob("[0-9]*.log"):  # every worker, from its fork on
            pid = int(log.stem)
            if _exited(pid) and "Traceback" in log.read_text(errors="replace"):
                return pid, None
        return None

    def stop_workers(self) -> None:
        self.done.set()
        self.join()  # no signal from this thread after this point
        for process in self.seen.values():  # FFCV's: SIGTERM kills them (`_on_fork`)
            if process.is_alive():
                process.terminate()
                process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join(STOP_GRACE_S)


def _exited(pid: int) -> bool:
    """Whether child `pid` has exited (a zombie, or reaped already), without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def page_size(max_side: int) -> int:
    page = FFCV_DEFAULT_PAGE
    while page < 2 * max_side * max_side * 3:  # a raw record must fit in one page
        page *= 2
    return page


def estimate_size(found: Scanned, jpeg_share: float, workers: int, page: int) -> int:
    """Bytes of the .beton FFCV will write for the good images of `found`, from its layout
    (ffcv/writer.py, ffcv/memory_allocator.py):
    - header, field descriptors and one metadata row per record, padded to a whole page;
    - each image: raw, h x w x 3 bytes after the max-side resize (exact, from the scan); JPEG,
      that times the JPEG/raw ratio of the scan's sample (FFCV's encoder at the write's
      quality; 1 if nothing was sampled); `jpeg_share` of the images as JPEG, the rest raw;
    - pages: each worker fills pages of its own and starts the next when a record does not
      fit, losing about half a record per page, and writes its last page whole: about half a
      page per worker more, and at least one page per worker (what sizes a small write);
    - the allocation table, one row per record.
    Within a few % for raw; for JPEG as good as the sample (the tests allow 2x)."""
    records = len(found.good)
    # No sample (its images were all skipped): assume JPEG saves nothing, an upper bound.
    ratio = found.sample_jpeg_bytes / found.sample_raw_bytes if found.sample_raw_bytes else 1.0
    data = found.raw_bytes * (1 - jpeg_share + jpeg_share * ratio)
    metadata = get_metadata_type([RGBImageField(), IntField()]).itemsize * records
    head_pages = math.ceil((HeaderType.itemsize + 2 * FieldDescType.itemsize + metadata) / page)
    per_page = page - data / max(records, 1) / 2
    writing = min(workers, math.ceil(records / WRITE_CHUNK))  # FFCV hands out WRITE_CHUNK a task
    # ... and a worker that writes at all writes at least one whole page (small writes).
    pages = head_pages + max(writing, data / per_page + writing / 2)
    return int(pages * page + records * ALLOC_TABLE_TYPE.itemsize)


def _last_error(log: Path) -> str | None:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [line for line in lines if line.strip() and not line.startswith((" ", "Process"))]
    return errors[-1] if errors else None


def _worker_failure(pid: int, exitcode: int | None, log_dir: str) -> str:
    error = _last_error(Path(log_dir) / f"{pid}.log")
    if error is None:  # killed before it could print: a signal (the OOM killer sends 9)
        return f"writer worker {pid} died with exit code {exitcode}"
    hint = " (disk full?)" if any(code in error for code in DISK_FULL_ERRNOS) else ""
    return f"writer worker {pid} failed: {error}{hint}"


class _SigtermExit:
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
                    page: int, progress: bool, desc: str, log_dir: str, go, parent: int,
                    *streams: None) -> None:
    """The child: FFCV's DatasetWriter and its workers. Exits 0 written, 1 failed (the reason in
    `log_dir/failure`), 143 stopped by the parent. `streams` (CallerStream) made fds 1 and 2 the
    caller's as the arguments were unpickled, before this runs."""
    import ffcv.writer

    global _worker_logs
    # A forkserver child inherits forkserver as its default start method: FFCV's workers must
    # fork from this process (see `_on_fork`), which has no thread yet.
    multiprocessing.set_start_method("fork", force=True)
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # Start nothing until the parent holds this process: a Ctrl-C inside its `start()` would
    # otherwise orphan a write (and FFCV's shared memory) it can no longer stop.
    while not go.wait(1):
        try:
            os.kill(parent, 0)  # its parent is the forkserver: ask after the caller itself
        except ProcessLookupError:
            os._exit(1)
    watchdog = _WorkerWatchdog(log_dir)
    stop = _SigtermExit(watchdog)

    # FFCV 1.0.2's writer has no hooks for signals, progress or cleanup: `prepare` (creates the
    # file and the shared `metadata_sm`), the module-level `tqdm` that `_write_common` calls and
    # its default-context (fork) `Process` workers are its internals, as checked against ffcv
    # 1.0.2 by tests/test_internals_data.py.
    class Writer(ffcv.writer.DatasetWriter):
        def prepare(self):  # creates the file and FFCV's shared memory
            with stop.held():
                super().prepare()

    signal.signal(signal.SIGTERM, stop)
    terminal, sys.stderr = sys.stderr, open(Path(log_dir) / "writer.log", "w", buffering=1)
    bars = []  # FFCV draws its bar with no switch: ours obeys --no-progress, on the terminal

    def bar(*args, **kwargs):  # FFCV passes total=the record count, so tqdm shows an ETA
        kwargs = {"desc": f"write {desc}", "unit": "img", **kwargs}
        bars.append(tqdm(*args, disable=not progress, file=terminal, **kwargs))
        return bars[-1]

    ffcv.writer.tqdm = bar  # in this process only; ffcv 1.0.2 looks `tqdm` up at module level
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
        (Path(log_dir) / "failure").write_text(_worker_failure(*watchdog.dead, log_dir))
    memory = getattr(writer, "metadata_sm", None)
    if memory is not None and not isinstance(memory, int):
        memory.unlink()  # FFCV unlinks it only on success (no close: FFCV's arrays still view it)
    sys.stderr.flush()
    os._exit(code)  # not through exit handlers: FFCV's queues may hold work for dead workers


def ffcv_write(partial_path: Path, records: BetonRecords, workers: int, fields: dict, page: int,
               progress: bool = True, desc: str = "beton") -> None:
    """Write `records` to `partial_path` in a writer process; raise `WriteFailed` with one line
    if it fails, and stop it (and its workers) on Ctrl-C or any other exception here."""
    log_dir = tempfile.mkdtemp(prefix="resnext_lit_writer_")
    context = process_context()
    go = context.Event()
    child = context.Process(target=_writer_process, name="beton-writer", args=(
        partial_path, records, workers, fields, page, progress, desc, log_dir, go, os.getpid(),
        CallerStream(1), CallerStream(2)))
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
