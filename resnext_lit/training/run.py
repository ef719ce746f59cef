"""The CLI's side of run identity: decide which run a command is, on every rank alike, and point
the loggers, checkpoints and record at its folder (the rules: `resnext_lit.run_identity`).

    python -m resnext_lit fit --config configs/demo.yaml --run_name demo_c4 --model.cardinality 4
    # -> run demo_c4/<id>: new run (runs/demo_c4/<id>); the CSV version and W&B id are <id>

Every rank of a DDP run must choose the same run before any of them can talk to another:
Lightning's own launcher restarts this command for ranks 1..N-1 with the environment of rank 0,
which hands its choice over in RESNEXT_LIT_RUN_ID; SLURM (`srun`, one task per GPU) starts every
rank alike, so a new run's id is derived from the job, its step and its restart; under torchrun
from `--rdzv-id` (TORCHELASTIC_RUN_ID), or `--run_id`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from ..errors import UserError
from ..run_identity import ID_ALPHABET, ID_LENGTH, Run, choose_run, setting_of, slurm_job_key

RUN_ID_ENV = "RESNEXT_LIT_RUN_ID"  # rank 0's choice, for the ranks Lightning starts from it


def recipe_of(config) -> str | None:
    """The recipe: the first --config file's name (`configs/demo.yaml` -> "demo")."""
    paths = config.get("config") or []
    return Path(str(paths[0])).stem if paths else None


def which_run(config, stage: str) -> Run:
    """Choose this command's run and make the config say it (run_name, run_id, ckpt_path, the
    loggers' folders and ids). Raises `UserError` before anything is
    written when the command cannot continue the run it names."""
    recipe = recipe_of(config)
    name = config.get("run_name") or recipe or "default"
    data = config.get("data")
    setting = setting_of(dict(config.model), getattr(data, "class_path", None), recipe,
                         config.get("seed_everything"))
    given = config.get("run_id") or os.environ.get(RUN_ID_ENV)
    run = choose_run(stage, Path(config.run_root), name, setting, given,
                     config.get("ckpt_path"),
                     fresh_id=None if given else _agreed_new_id(stage, name))
    run.setting = setting
    if stage == "fit":
        config.ckpt_path = str(run.resume_from) if run.resume_from else None
    config.run_name, config.run_id = run.name, run.id
    _point_loggers(config, run)
    os.environ[RUN_ID_ENV] = run.id  # the ranks Lightning launches from this process
    return run


def announce(run: Run) -> None:
    """One line (from rank 0: the CLI asks): which run this is, and where it lives."""
    print(f"run {run.name}/{run.id}: {run.why} ({run.folder})", file=sys.stderr)


def forget_run() -> None:
    """After the command: the next command in this process (tests, notebooks) is a new run."""
    os.environ.pop(RUN_ID_ENV, None)


def _agreed_new_id(stage: str, name: str) -> str | None:
    """The id a new run gets when every rank starts on its own (None: any fresh id will do,
    this process is the only one, or rank 0 of Lightning's launcher)."""
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS") or 1) > 1:
        key = (slurm_job_key(), os.environ.get("SLURM_STEP_ID"),
               os.environ.get("SLURM_RESTART_COUNT") or "0", stage, name)
    elif int(os.environ.get("WORLD_SIZE") or 1) > 1 and "LOCAL_RANK" in os.environ:
        rdzv = os.environ.get("TORCHELASTIC_RUN_ID")
        if rdzv in (None, "", "none"):
            raise UserError("torchrun starts every rank on its own: give --run_id, or "
                            "--rdzv-id to torchrun (scripts/torchrun_train.sh does)")
        key = (rdzv, stage, name)
    else:
        return None
    digest = int(hashlib.sha256("/".join(map(str, key)).encode()).hexdigest(), 16)
    return "".join(ID_ALPHABET[(digest >> (6 * i)) % len(ID_ALPHABET)] for i in range(ID_LENGTH))


def _point_loggers(config, run: Run) -> None:
    """The run's folder for the loggers, checkpoints (via the first logger) and the record."""
    config.trainer.default_root_dir = str(run.folder)  # where everything goes without a logger
    loggers = config.trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init = getattr(logger, "init_args", None)
        if init is None:
            continue
        if "wandb" in logger.class_path.lower():
            # W&B's files inside the run folder; one W&B run per run: same id at every resume.
            for key, value in (("name", run.name), ("save_dir", str(run.folder)),
                               ("id", run.id), ("version", run.id), ("resume", "allow")):
                setattr(init, key, value)
        elif "save_dir" in init:  # CSV, TensorBoard: <save_dir>/<name>/<version>
            init.save_dir, init.name, init.version = str(run.root), run.name, run.id
