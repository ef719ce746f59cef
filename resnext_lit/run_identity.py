"""Run identity: one run is one id, from its first start to its last resume.

    python -m resnext_lit fit --config configs/demo.yaml                # new run runs/demo/<id>
    python -m resnext_lit fit --config configs/demo.yaml --ckpt_path last   # the newest like it
    python -m resnext_lit fit --config configs/demo.yaml --run_id k3x9a0qz  # that run, resumed
    python -m resnext_lit fit --config configs/demo.yaml \
        --ckpt_path runs/demo/k3x9a0qz/checkpoints/last.ckpt               # its own run

A run lives in `<run_root>/<run_name>/<run_id>/` (config.yaml, metrics.csv, checkpoints/,
results.json, wandb/): the CSV logger's version, the W&B run's id and every record carry the
id, so a resumed run continues its own folder, its own history and its own W&B run. The name
(`--run_name`, default the recipe, i.e. the first `--config` file's stem) groups runs of one
recipe; the id (8 characters of [0-9a-z], W&B's own alphabet) tells them apart. Which run a
`fit` continues (`choose_run`), first rule that applies:

1. `--run_id X`: run X of that name, resumed from its `last.ckpt` if it has one, else started.
2. `--ckpt_path FILE`: the run that wrote FILE when FILE lies in a run folder, else a new run
   starting from FILE's state.
3. `--ckpt_path last`: the newest run of the name whose setting (network, recipe, data, seed:
   `setting_of`) equals the command's and that no process is training now, resumed from its
   `last.ckpt`, or started again in its own folder if it was killed before its first
   checkpoint; none alike: one line naming what differs; no run of that name: a new run.
4. A W&B sweep agent's run (WANDB_SWEEP_ID and WANDB_RUN_ID set): id = WANDB_RUN_ID, under
   `<run_root>/sweeps/<sweep id>/`, resumed when the agent hands a preempted run back.
5. A requeued SLURM job (SLURM_RESTART_COUNT >= 1): the run its job (array task) recorded, if
   its setting equals the command's (resumed, or started again if it had no checkpoint yet),
   else a new run.
6. Else a new run. `validate`, `test` and `predict` always make a new run (their own record).

While a `fit` runs, its rank 0 holds a lock on `<run folder>/.alive` (`hold`; the kernel lets
go when the process ends, however it ends): a run being trained is never resumed by another
command, and a run whose lock is free but whose record still says "running" was killed. On a
file system without locks nothing is locked and every run counts as not running.

Lightning-free: `experiments/` (the local sweep runner) names its runs with it too.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .atomic import remove_stale_temporaries
from .errors import UserError

ID_ALPHABET = string.digits + string.ascii_lowercase
ID_LENGTH = 8
ID_PATTERN = re.compile(r"[0-9a-z]{1,64}")
RECORD = "results.json"
LAST = Path("checkpoints") / "last.ckpt"
ALIVE = ".alive"  # the lock a run's rank 0 holds while it trains (`hold`)


def new_run_id() -> str:
    """A fresh run id: 8 characters of [0-9a-z] (36^8 ~ 2.8e12, so two never meet)."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def check_run_id(run_id: str) -> str:
    if not ID_PATTERN.fullmatch(str(run_id)):
        raise UserError(f"--run_id {run_id!r}: use lower-case letters and digits "
                        "(W&B's run id alphabet)")
    return str(run_id)


@dataclass
class Run:
    """Which run a command is: where it lives and what it resumes (None: it starts)."""

    root: Path
    name: str
    id: str
    resume_from: Path | None = None
    why: str = "new run"
    setting: dict | None = None

    @property
    def folder(self) -> Path:
        return self.root / self.name / self.id


def read_record(folder: Path) -> dict | None:
    """A run folder's results.json, or None if it has none (or a torn one)."""
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def slurm_job_key() -> str | None:
    """This SLURM job's key: `<array job>_<task>` for an array task, else the job id."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return os.environ.get("SLURM_JOB_ID")


def setting_of(model: dict, data_class: str | None, recipe: str | None, seed) -> dict:
    """What makes two starts one run (and two runs of one name different): the network the
    model settings build (depth, C, d, form, blurpool, whatever arch name reached it), the
    recipe, the data and the seed. Batch sizes, workers, paths and devices may change between
    resumes (the global batch keeps the recipe), so they are not part of it."""
    from .models.registry import model_config, model_entry

    overrides = {k: model.get(k) for k in ("depth", "cardinality", "bottleneck_width", "form",
                                            "blurpool")}
    config = model_config(model["arch"], **overrides)
    network = {"depth": overrides["depth"] or model_entry(model["arch"])["depth"],
               "cardinality": config["cardinality"],
               "bottleneck_width": config["bottleneck_width"],
               "form": config.get("form", "c"), "blurpool": bool(config.get("blurpool"))}
    return {"network": network, "recipe": recipe,
            "data": (data_class or "").rsplit(".", 1)[-1] or None, "seed": seed}


def setting_difference(mine: dict, theirs: dict | None) -> str:
    """'network.cardinality 4 (run: 8); seed 1 (run: 0)', or '' when the settings agree."""
    if theirs is None:
        return "no recorded setting (a run from before run ids)"
    flat_mine, flat_theirs = _flatten(mine), _flatten(theirs)
    keys = sorted(set(flat_mine) | set(flat_theirs))
    return "; ".join(f"{k} {flat_mine.get(k)!r} (run: {flat_theirs.get(k)!r})"
                     for k in keys if flat_mine.get(k) != flat_theirs.get(k))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def choose_run(stage: str, root: Path, name: str, setting: dict, run_id: str | None,
               ckpt_path: str | None, fresh_id: str | None = None) -> Run:
    """Which run this command is (the rules in the module docstring); raises `UserError` in one
    line, before anything is written, when the command cannot be that run. `fresh_id`: the id a
    new run gets (default: a random one)."""
    fresh = fresh_id or new_run_id()
    if run_id is not None:
        check_run_id(run_id)
    if stage != "fit":
        return Run(root, name, run_id or fresh, why=f"new {stage} run")
    if run_id is not None:
        return _named_run(Run(root, name, run_id), setting, ckpt_path)
    if ckpt_path not in (None, "last"):
        return _run_of_file(root, name, Path(ckpt_path), fresh)
    if ckpt_path == "last":
        return _newest_alike(root, name, setting, fresh)
    agent = _agent_run(root, name, setting)
    if agent is not None:
        return agent
    requeued = _requeued_run(root, name, setting, fresh)
    if requeued is not None:
        return requeued
    return Run(root, name, fresh)


def _named_run(run: Run, setting: dict, ckpt_path: str | None) -> Run:
    if ckpt_path not in (None, "last"):  # --run_id X --ckpt_path FILE: FILE must be X's
        of_file = _run_of_file(run.root, run.name, Path(ckpt_path), run.id)
        if of_file.id != run.id:
            raise UserError(f"--ckpt_path {ckpt_path} belongs to run {of_file.id}, "
                            f"not --run_id {run.id}")
        return of_file
    if not (run.folder / LAST).is_file():
        run.why = "new run (its id given)"
        return run
    _check_same_setting(run.folder, setting, f"--run_id {run.id}")
    run.resume_from, run.why = run.folder / LAST, "resuming"
    return run


def _run_of_file(root: Path, name: str, path: Path, fresh: str) -> Run:
    """FILE's own run when FILE is `<root>/<name>/<id>/checkpoints/*.ckpt` of a recorded run."""
    folder = path.resolve().parent.parent
    record = read_record(folder) if path.resolve().parent.name == "checkpoints" else None
    run = (record or {}).get("run") or {}
    if run.get("id") == folder.name:
        return Run(folder.parent.parent, folder.parent.name, folder.name, path,
                   why=f"resuming from {path.name}")
    return Run(root, name, fresh, path,
               why=f"new run, starting from {path} (not in a run folder)")


def _candidates(runs_of_name: Path) -> list[Path]:
    """Run folders of one name that can be continued (a `last.ckpt`, or a record of a run
    killed before its first checkpoint) and that no process is training now, newest first."""
    folders = {p.parent.parent for p in runs_of_name.glob(f"*/{LAST}")}
    folders |= {p.parent for p in runs_of_name.glob(f"*/{RECORD}") if _killed_early(p.parent)}
    folders = [f for f in folders if not alive(f)]
    return sorted(folders, key=_last_change, reverse=True)


def _killed_early(folder: Path) -> bool:
    """A `fit` whose record says it is running, with no checkpoint (killed before its first)."""
    record = read_record(folder) or {}
    return record.get("stage") == "fit" and record.get("status") == "running"


def _last_change(folder: Path) -> float:
    return max((folder / name).stat().st_mtime for name in (LAST, RECORD)
               if (folder / name).exists())


def _continued(root: Path, name: str, folder: Path, why: str) -> Run:
    """`folder`'s run, resumed from its last.ckpt, or started again in its own folder when it
    was killed before writing one (so a dead run never stays beside its successor)."""
    if (folder / LAST).is_file():
        return Run(root, name, folder.name, folder / LAST, why=why)
    return Run(root, name, folder.name, why=f"{why} from the start (it was stopped before its "
                                            "first checkpoint)")


def _newest_alike(root: Path, name: str, setting: dict, fresh: str) -> Run:
    folders = _candidates(root / name)
    if not folders:
        return Run(root, name, fresh, why=f"new run (no run of {root / name} to resume)")
    for folder in folders:
        record = read_record(folder) or {}
        if not setting_difference(setting, record.get("setting")):
            return _continued(root, name, folder, "resuming")
    newest = read_record(folders[0]) or {}
    raise UserError(f"--ckpt_path last: no run under {root / name} has this command's setting; "
                    f"the newest, {folders[0].name}, differs: "
                    f"{setting_difference(setting, newest.get('setting'))}")


def _check_same_setting(folder: Path, setting: dict, what: str) -> None:
    """Refuse to continue a run of another setting. A folder without a record (named by hand,
    from before run ids) is taken at its word; its checkpoint's network is still checked."""
    record = read_record(folder)
    difference = setting_difference(setting, record.get("setting")) if record else ""
    if difference:
        raise UserError(f"{what}: {folder} was trained with another setting: {difference}")


def _agent_run(root: Path, name: str, setting: dict) -> Run | None:
    """A run started by `wandb agent`: the agent hands the run id over in WANDB_RUN_ID (also
    when it hands back a preempted run to resume), so the id is W&B's."""
    sweep, run_id = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if not (sweep and run_id):
        return None
    run = Run(root / "sweeps" / sweep, name, check_run_id(run_id), why="new sweep run")
    if (run.folder / LAST).is_file():
        _check_same_setting(run.folder, setting, f"W&B sweep run {run_id}")
        run.resume_from, run.why = run.folder / LAST, "resuming the preempted sweep run"
    return run


def _requeued_run(root: Path, name: str, setting: dict, fresh: str) -> Run | None:
    """A requeued SLURM job reruns its script unchanged: the run its job recorded, resumed."""
    job = slurm_job_key()
    if not job or int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1:
        return None
    mine = [f for f in _candidates(root / name)
            if (read_record(f) or {}).get("slurm_job") == job]
    for folder in mine:
        if not setting_difference(setting, (read_record(folder) or {}).get("setting")):
            return _continued(root, name, folder, f"SLURM job {job} requeued: resuming")
    if mine:
        return Run(root, name, fresh,
                   why=f"new run (SLURM job {job}'s run {mine[0].name} has another setting)")
    return None


# -- a run being trained ---------------------------------------------------------------------
def alive(folder: Path) -> bool:
    """Whether a process is training the run in `folder` now (it holds the folder's lock)."""
    path = folder / ALIVE
    if not path.is_file():
        return False
    with open(path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # no locks on this file system: nothing can tell
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def hold(folder: Path) -> IO:
    """Take `folder`'s lock for this process (rank 0 of a `fit`) until `let_go`, or raise a
    one-line `UserError` if another process trains this run now. Files that a killed earlier
    attempt left half-written (`atomic_write`'s temporaries) are removed: only the holder
    writes here."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / ALIVE, "a")  # empty: only its lock matters, and the kernel's
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserError(f"run {folder.parent.name}/{folder.name} is being trained now by "
                        "another process; wait for it, or start another run") from None
    except OSError:  # no locks on this file system: train without one
        return lock
    remove_stale_temporaries(folder)
    return lock


def let_go(lock: IO | None, folder: Path) -> None:
    """Release `hold`'s lock; a folder that holds nothing else (a start that failed before it
    wrote anything) goes too."""
    if lock is None:
        return
    lock.close()
    if [p.name for p in folder.iterdir()] == [ALIVE]:
        (folder / ALIVE).unlink()
        folder.rmdir()
