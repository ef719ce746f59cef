"""What a command changes in its process, put back when it returns.

    from resnext_lit.process import kept
    with kept() as process:              # cli.main runs every command inside this
        ...                              # Preemption, Lightning, torch change what they change
        process.keep_ignoring_stops()    # only a CLI process on its way out after a stop

A run changes its process on the way: `Preemption` takes SIGTERM and SIGUSR1 (and SLURM's
requeue signal); Lightning's signal connector wraps them and later puts back what it found
(ours, after a stop); torch's DataLoader installs a SIGCHLD handler once per process;
Lightning sets environment variables (PL_GLOBAL_SEED, CUBLAS_WORKSPACE_CONFIG, DDP's
MASTER_PORT/WORLD_SIZE/LOCAL_RANK in the launching process) and torch flags
(`use_deterministic_algorithms`, cuDNN's benchmark); `training.console` silences upstream
warnings. Called as a library (`resnext_lit.cli.main([...])` from a notebook,
`wandb.agent(function=...)`, a test), the caller must get its process back as it was, whether the
run finished, failed or was preempted. A stop signal left ignored, or bound to a callback of a
finished run, is inherited by every process forked afterwards: a pool worker that ignores
SIGTERM cannot be terminated (seen: a benchmark's pool hung after an in-process preempted fit).
What is not put back: the random generators a seed set (the caller asked for the seed), and what
importing a library does once (its own loggers, handlers and caches).

Only `python -m resnext_lit` after a preemption keeps ignoring SIGTERM and SIGUSR1 until it
exits: the record and the W&B run are closed, and a late signal (SLURM's SIGTERM after the
requeue, a second kill) must not replace the first signal's exit status.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Every signal a Python handler can be set for (SIGKILL and SIGSTOP cannot be caught).
CATCHABLE = tuple(sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}))
# torch's global flags a run may set, as a fresh `import torch` has them (for a command that
# imported torch itself).
TORCH_DEFAULTS = {"deterministic": False, "warn_only": False, "cudnn_benchmark": False,
                  "cudnn_deterministic": False, "matmul_precision": "highest"}


def _torch_flags() -> dict | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {"deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "matmul_precision": torch.get_float32_matmul_precision()}


def _set_torch_flags(flags: dict) -> None:
    import torch

    if _torch_flags() == flags:
        return
    torch.use_deterministic_algorithms(flags["deterministic"], warn_only=flags["warn_only"])
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = flags["cudnn_deterministic"]
    torch.set_float32_matmul_precision(flags["matmul_precision"])


class Process:
    """This process's signal handlers, environment and torch flags, as found (the warning
    filters: `warnings.catch_warnings` in `kept`)."""

    def __init__(self):
        # Handlers can only be set from the main thread; elsewhere none is read or set back.
        main = threading.current_thread() is threading.main_thread()
        # None: a handler set outside Python, which Python cannot set back (left alone).
        self.handlers = {signum: signal.getsignal(signum) for signum in CATCHABLE} if main \
            else {}
        self.environ = dict(os.environ)
        self.torch_flags = _torch_flags()
        self.ignore_stops = False

    def keep_ignoring_stops(self) -> None:
        """On leaving, SIGTERM and SIGUSR1 stay ignored (a CLI process that was stopped and is
        about to exit); the rest is put back."""
        self.ignore_stops = True

    def restore(self) -> None:
        for signum, handler in self.handlers.items():
            if self.ignore_stops and signum in STOP_SIGNALS:
                handler = signal.SIG_IGN
            if handler is not None and signal.getsignal(signum) != handler:
                signal.signal(signum, handler)
        for name in set(os.environ) - set(self.environ):
            del os.environ[name]
        for name, value in self.environ.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
        if "torch" in sys.modules:
            _set_torch_flags(self.torch_flags or TORCH_DEFAULTS)


@contextmanager
def kept():
    """The block's process changes undone when it ends, however it ends (returned, raised,
    preempted); see the module's docstring for what is kept."""
    process = Process()
    try:
        with warnings.catch_warnings():  # the warning filters, as found
            yield process
    finally:
        process.restore()
