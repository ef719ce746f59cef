"""Process pools we start (the beton writer's scan, the benchmarks): workers that stop on
SIGTERM, and a stop that never waits for ever.

    from resnext_lit.pools import WorkerPool
    with WorkerPool(multiprocessing.get_context("forkserver"), 4, initializer=quiet) as pool:
        results = pool.imap(work, tasks)

`multiprocessing.Pool.terminate()` sends each worker SIGTERM and then joins it with no time
limit. A worker that does not die of SIGTERM hangs its caller: a forked worker inherits the
caller's Python handlers (a run's preemption handler, which ignores stop signals once it
stopped), and a forkserver or spawned one inherits SIG_IGN through exec. Seen: a benchmark's
`close()` waiting for ever on a worker forked after an in-process preempted `fit`. So every
worker starts by putting SIGTERM and SIGUSR1 back to their default action, and `close` waits
`STOP_GRACE_S` for the pool to stop, then SIGKILLs what is left.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading

STOP_GRACE_S = 10  # for workers to die of SIGTERM (they hold no state worth a longer wait)


def default_stop_signals() -> None:
    """In a worker we started: SIGTERM and SIGUSR1 kill it (whatever its parent had), Ctrl-C
    is the parent's to handle."""
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_worker(initializer, initargs) -> None:
    default_stop_signals()
    if initializer is not None:
        initializer(*initargs)


class WorkerPool:
    """A `multiprocessing.Pool` of `context` whose workers stop on SIGTERM and whose `close`
    is bounded (see above). Use it as a context manager, or call `close()`."""

    def __init__(self, context, workers: int, initializer=None, initargs=()):
        before = set(multiprocessing.active_children())
        self.pool = context.Pool(workers, initializer=_start_worker,
                                 initargs=(initializer, initargs))
        # The pool starts its workers in its constructor (no maxtasksperchild: never again).
        self.workers = [p for p in multiprocessing.active_children() if p not in before]

    def __enter__(self):
        return self.pool

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the workers: SIGTERM (the pool's own `terminate`), at most `grace_s` seconds
        for them to go, then SIGKILL. `terminate` runs in a thread of its own because it can
        block for ever (it joins workers with no timeout)."""
        stopping = threading.Thread(target=self.pool.terminate, name="pool-terminate",
                                    daemon=True)
        stopping.start()
        stopping.join(grace_s)
        for worker in self.workers:
            if worker.is_alive():
                worker.kill()
            worker.join(grace_s)
        stopping.join(grace_s)  # the pool's own threads, once its workers are gone
