"""The local sweep runner's processes: N runs at once, GPU slices, one state writer, signals.

    python -m resnext_lit sweep sweeps/table7_cifar.yaml --parallel 8     # 8 at once, 1 GPU each

`resnext_lit.experiments.sweep` reads the sweep file and plans the runs; this module launches them.

`--parallel N` runs N grid points at once, each with a slice of the visible GPUs as its
CUDA_VISIBLE_DEVICES (the runner's own CUDA_VISIBLE_DEVICES if set, else every GPU): 8 GPUs and
N=4 give 2 each, or `--devices-per-run K`. The commands stay as they are, so the recipe's
`trainer.devices` counts inside the slice: `1` uses its first GPU, `-1` or `auto` all of it (DDP
within the slice, on a MASTER_PORT of its own), more than the slice fails that run with
Lightning's message. Without GPUs the N runs share the CPU cores: each gets OMP_NUM_THREADS =
cores // N unless that is set. Each grid point's run is named by the runner (`--run_root
<sweep folder> --run_name <point> --run_id <id>`, `resnext_lit.run_identity`), so it lives in
`<sweep folder>/<point>/<id>/` and runs start together without waiting for one another. Only
the runner writes state.json (which keeps each point's run id), and only one runner per sweep
at a time (a lock file).

Ctrl-C or SIGTERM to the runner sends SIGTERM to every run (each saves last.ckpt and records
itself interrupted: `resnext_lit.training.preemption`), waits up to --stop-timeout seconds, kills
what is left and exits with 128 + the signal; a second Ctrl-C kills at once. The runs live in
process groups of their own, so a terminal's Ctrl-C reaches them only through the runner, once,
and nothing of a run (loader workers, DDP ranks) outlives it. Finished runs stay finished; an
interrupted run resumes next time from its last.ckpt (same id, folder and W&B run); a failed
one starts over as a new run.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from ..atomic import write_json_atomic
from ..errors import UserError
from ..run_identity import new_run_id

SYNC_LINE = re.compile(r"wandb sync (\S+?)`")
POLL_S = 0.5  # how often the runner looks at its runs (exits, new records, signals)
# Long enough for a stopped run to finish its step, or the validation of an epoch's end, and
# write last.ckpt.
STOP_TIMEOUT_S = 120.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def visible_gpus() -> list[str]:
    """The GPUs this runner may hand out: its CUDA_VISIBLE_DEVICES if set, else every GPU."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        gpus = []
        for token in (t.strip() for t in os.environ["CUDA_VISIBLE_DEVICES"].split(",")):
            if not token or token.startswith("-"):
                break  # CUDA stops at the first id it cannot use: "" or "-1" means no GPU
            gpus.append(token)
        return gpus
    import torch  # device_count asks NVML: no CUDA context (nor its memory) in the runner

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_slots(parallel: int, per_run: int | None, gpus: list[str]) -> list[list[str] | None]:
    """The GPUs of each of the `parallel` places a run can take, as CUDA_VISIBLE_DEVICES lists
    (None: no GPUs to share out, the runs inherit the runner's environment)."""
    if not gpus:
        if per_run:
            raise UserError(f"--devices-per-run {per_run}: no GPU is visible")
        return [None] * parallel
    if per_run is None:
        if len(gpus) % parallel:
            raise UserError(f"--parallel {parallel} does not divide the {len(gpus)} visible "
                            f"GPUs ({','.join(gpus)}); give --devices-per-run as well")
        per_run = len(gpus) // parallel
    elif per_run * parallel > len(gpus):
        raise UserError(f"--parallel {parallel} x --devices-per-run {per_run} needs "
                        f"{parallel * per_run} GPUs; {len(gpus)} are visible ({','.join(gpus)})")
    return [gpus[i * per_run:(i + 1) * per_run] for i in range(parallel)]


def sharing(slots: list, threads: int | None) -> str:
    """How the runs share the machine, for the sweep's first line."""
    if slots == [None]:
        return ""
    gpus = f" (CUDA_VISIBLE_DEVICES {' | '.join(map(','.join, slots))})" if slots[0] else ""
    cpus = f", OMP_NUM_THREADS={threads} each" if threads else ""
    return f", {len(slots)} at a time{gpus}{cpus}"


@contextmanager
def only_runner(sweep_dir: Path, name: str):
    """Hold the sweep's lock: a second runner would be a second writer of state.json."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".lock", "w") as lock:  # the kernel lets go if the runner dies
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"sweep {name} is being run by another runner "
                            f"(it holds {sweep_dir / '.lock'})") from None
        yield


class _StopRuns:
    """SIGINT, SIGTERM or SIGHUP to the runner: noted by the handler, acted on by `act` between
    polls. A signal the runner was started ignoring (nohup) stays ignored."""

    def __enter__(self) -> _StopRuns:
        self.signum, self.count, self.deadline, self.killed = None, 0, None, False
        self._previous = {}
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum: int, frame) -> None:
        self.signum = self.signum or signum
        self.count += 1

    def act(self, running: list[_Run], timeout: float) -> None:
        """Once signalled: SIGTERM to every run, once (it saves last.ckpt and stops; Lightning
        passes it on to DDP ranks), then SIGKILL to what is left after `timeout` seconds or at
        a second signal."""
        if self.signum is None:
            return
        if self.deadline is None:
            print(f"{signal.Signals(self.signum).name}: stopping {len(running)} run(s) with "
                  f"SIGTERM (each saves last.ckpt); killing them after {timeout:.0f} s or at a "
                  "second Ctrl-C", flush=True)
            for run in running:
                with suppress(ProcessLookupError):
                    os.kill(run.proc.pid, signal.SIGTERM)
            self.deadline = time.monotonic() + timeout
        if running and not self.killed and (self.count > 1 or time.monotonic() > self.deadline):
            print(f"killing {len(running)} run(s)", flush=True)
            for run in running:
                with suppress(ProcessLookupError):
                    os.killpg(run.proc.pid, signal.SIGKILL)
            self.killed = True

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)


@dataclass
class _Run:
    """One launched run: its process, its place (`slot`) and its start."""

    entry: dict
    tag: str             # "[3/40]"
    slot: int
    proc: subprocess.Popen
    log: IO
    start: float


def run_all(todo: list[dict], slots: list, threads: int | None, sweep_dir: Path, env: dict,
            stop_timeout: float, save) -> tuple[int, int | None]:
    """Run `todo`, len(slots) at a time (`slots`, `threads`: see `_start`); `save()` writes
    the state after every change.
    Returns how many runs did not finish, and the signal that stopped the sweep (or None)."""
    queue, running, free, failures = list(enumerate(todo, 1)), [], list(range(len(slots))), 0
    with _StopRuns() as stop:
        try:
            while running or (queue and not stop.signum):
                stop.act(running, stop_timeout)
                while queue and free and not stop.signum:
                    n, entry = queue.pop(0)
                    slot = free.pop(0)
                    running.append(_start(entry, f"[{n}/{len(todo)}]", slot, slots[slot],
                                          threads, sweep_dir, env))
                    save()
                for run in [r for r in running if r.proc.poll() is not None]:
                    running.remove(run)
                    free.append(run.slot)
                    failures += not _finish(run, sweep_dir, stopped=bool(stop.signum))
                    save()
                time.sleep(POLL_S)
        finally:
            if running:  # only if the runner itself failed: leave no run behind
                _stop_now(running, stop_timeout)
    return failures, stop.signum


def _stop_now(running: list[_Run], timeout: float) -> None:
    """SIGTERM to each run (it saves last.ckpt), at most `timeout` seconds for them to exit,
    then SIGKILL to their process groups; every run reaped."""
    for run in running:
        with suppress(ProcessLookupError):
            os.kill(run.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for run in running:
        with suppress(subprocess.TimeoutExpired):
            run.proc.wait(max(0.0, deadline - time.monotonic()))
        with suppress(ProcessLookupError):  # what is left of it: loader workers, DDP ranks
            os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait()  # SIGKILL cannot be ignored: this returns
        run.log.close()


def _start(entry: dict, tag: str, slot: int, gpus: list[str] | None, threads: int | None,
           sweep_dir: Path, env: dict) -> _Run:
    """Launch one run on `gpus` (its CUDA_VISIBLE_DEVICES; None: the runner's) with `threads`
    CPU threads (OMP_NUM_THREADS; None: the runner's); its console output goes to
    `<point>/output.log`. An interrupted run resumes (its id again), any other starts anew."""
    run_dir = sweep_dir / entry["folder"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").unlink(missing_ok=True)  # a previous attempt's failure note
    resume = entry.get("status") == "interrupted" and entry.get("run_id")
    if not resume:
        entry["run_id"] = new_run_id()
    argv = entry["argv"] + (["--run_root", str(sweep_dir), "--run_name", entry["folder"],
                             "--run_id", entry["run_id"]] if entry.get("ours") else [])
    extra = {}  # what this run's environment adds to the runner's, recorded in state.json
    if gpus is not None:
        extra["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        if len(gpus) > 1:  # DDP inside the slice: a rendezvous port per run, not one per node
            extra["MASTER_PORT"] = str(_free_port())
    if threads:
        extra["OMP_NUM_THREADS"] = str(threads)
    log = open(run_dir / "output.log", "a" if resume else "w")  # a resumed run's log goes on
    log.write(f"$ {shlex.join([f'{k}={v}' for k, v in extra.items()] + argv)}\n")
    log.flush()
    # A session, so a process group, of its own (see the module docstring), without stdin.
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, env={**env, **extra},
                            start_new_session=True)
    for key in ("returncode", "ended", "wall_s", "results", "wandb_dir"):
        entry.pop(key, None)  # the previous attempt's
    entry.update(status="running", started=_now(), attempts=entry.get("attempts", 0) + 1,
                 pid=proc.pid, env=extra)
    where = f", CUDA_VISIBLE_DEVICES={extra['CUDA_VISIBLE_DEVICES']}" if gpus is not None else ""
    how = (f"resuming run {entry['run_id']} from its last.ckpt" if resume
           else f"new run {entry['run_id']}" if entry.get("ours") else "started")
    print(f"{tag} {entry['folder']}: {how}, pid {proc.pid}{where}", flush=True)
    return _Run(entry, tag, slot, proc, log, time.monotonic())


def _finish(run: _Run, sweep_dir: Path, stopped: bool) -> bool:
    """Record a run that ended; True if it finished."""
    with suppress(ProcessLookupError):  # what is left of it: loader workers, DDP ranks
        os.killpg(run.proc.pid, signal.SIGKILL)
    run.log.close()
    entry, run_dir = run.entry, sweep_dir / run.entry["folder"]
    entry.update(returncode=run.proc.returncode, ended=_now(),
                 wall_s=round(time.monotonic() - run.start, 1))
    record = run_dir / entry["run_id"] / "results.json" if entry.get("ours") else None
    _collect(entry, run_dir, record if record and record.exists() else None, stopped)
    print(f"{run.tag} {entry['folder']}: {_summary(entry, run_dir)}", flush=True)
    return entry["status"] == "finished"


def _free_port() -> int:
    """A TCP port that is free now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _now() -> str:
    return datetime.now().isoformat(timespec="milliseconds")


def _collect(entry: dict, run_dir: Path, record_path: Path | None, stopped: bool) -> None:
    """Note the run's own results.json (`<point>/<id>/`), or record why there is none.
    `stopped`: the runner stopped it, so unless it finished it was interrupted."""
    log = (run_dir / "output.log").read_text(errors="replace")
    sync = SYNC_LINE.findall(log)
    entry["wandb_dir"] = sync[-1] if sync else None
    record = json.loads(record_path.read_text()) if record_path else None
    if record_path:
        entry["results"] = str(record_path)
    if entry["returncode"] == 0 and record and record.get("status") == "finished":
        entry["status"] = "finished"
    elif stopped or (record or {}).get("status") == "interrupted":  # e.g. SLURM's SIGTERM
        entry["status"] = "interrupted"
    else:
        entry["status"] = "failed"
    if record is None:  # no training record: a gap for the table, never a zero
        lines = [line for line in log.splitlines()[1:] if line.strip()]  # after the "$ argv"
        error = lines[-1] if lines else None
        if entry["returncode"] == 0:
            error = "exit 0 but no results.json in the run's folder"
        write_json_atomic(run_dir / "results.json", {
            "status": entry["status"], "arch": entry["params"].get("model.arch"),
            "sweep_params": entry["params"], "returncode": entry["returncode"],
            "error": error, "log": str(run_dir / "output.log")})
        entry["results"] = None


def _summary(entry: dict, run_dir: Path) -> str:
    record = json.loads(Path(entry["results"]).read_text()) if entry.get("results") else {}
    if entry["status"] != "finished":
        why = f"exit {entry['returncode']}" + (
            f", record says {record.get('status')}" if record else ", no record")
        return f"{entry['status']} ({why}, {entry['wall_s']:.0f} s); see {run_dir / 'output.log'}"
    final = (record.get("final") or {}).get("val/top1_err")
    err = f"val/top1_err {final:.2f}" if final is not None else "no val/top1_err"
    return f"finished in {entry['wall_s']:.0f} s, {err}"
