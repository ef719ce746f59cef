"""Run a W&B sweep file locally, without a W&B server: `python -m resnext_lit sweep`.

    python -m resnext_lit sweep sweeps/demo_cardinality.yaml              # every grid point
    python -m resnext_lit sweep sweeps/table3_resnext50.yaml --dry-run    # print the commands
    python -m resnext_lit sweep sweeps/table7_cifar.yaml --count 4        # 4 runs, then stop
    python -m resnext_lit sweep sweeps/table7_cifar.yaml --parallel 8     # 8 at once, 1 GPU each
    python -m resnext_lit sweep sweeps/table3_resnext50.yaml --point 3 -- --trainer.devices 8
    python -m resnext_lit table --runs runs/sweeps/demo-cardinality --out tables/demo

For machines with no W&B server or no network on the compute nodes. The grid comes from W&B's
own sweep engine (`sweeps`), and each run is launched as `wandb agent` launches it: the sweep's
`command` list with `${args}` expanded by wandb's own `create_sweep_command_args`
(`--model.arch=resnext50_32x4d`), as an argv list, never through a shell, and with W&B offline
(`wandb sync` uploads the runs later). Progress is kept in `<runs-dir>/sweeps/<name>/state.json`
(rewritten atomically); a restarted sweep skips the runs that finished and resumes the ones that
were interrupted. Each grid point gets a folder there with its console output and its run
(`<point>/<run id>/`: checkpoints, metrics.csv, results.json, wandb/), or a results.json that
records why it has none, so `table --runs <that folder>` reads exactly this sweep.

`--parallel N` runs N grid points at once, each on its own slice of the GPUs; Ctrl-C stops
them all. How runs are launched, share the machine and are stopped:
`resnext_lit.experiments.runner`.

`--point I` becomes grid point I's run (0-based, the order of `--dry-run`) in this very process
(exec), with the options after `--` added: one point per SLURM array task
(`scripts/slurm_sweep.sbatch`), where SLURM's signals must reach the training itself. It keeps
no state.json (array tasks run at once); the run goes to the same `<point>/` folder the runner
would use, and a requeued task resumes it (`resnext_lit.run_identity`, the SLURM rule).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import signal
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path

import yaml

from ..atomic import write_json_atomic
from ..errors import UserError
from .runner import STOP_TIMEOUT_S, gpu_slots, only_runner, run_all, sharing, visible_gpus

METHODS = ("grid", "random")  # bayes needs the server's model of past runs: use `wandb agent`
AGENT_DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # as wandb's
OUR_CLI = ["-m", "resnext_lit"]


def load_sweep(path: str | Path) -> dict:
    """The sweep file as a dict, checked by the `sweeps` schema plus what it lets through."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UserError(f"cannot read sweep file {path}: {err.strerror}") from None
    try:
        config = yaml.safe_load(text)  # safe: a sweep file is data, never code
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: a sweep file is a mapping (method, metric, parameters, ...)")
    with warnings.catch_warnings():  # sweeps' pydantic config warns on import; not ours to fix
        warnings.simplefilter("ignore")
        from sweeps.config import schema_violations_from_proposed_config
    try:
        problems = schema_violations_from_proposed_config(config)
    except ValueError as err:
        problems = [str(err)]
    if problems:
        raise UserError(f"{path}: {problems[0]}")
    _check_no_nulls(config["parameters"], path)
    return config


def _check_no_nulls(parameters: dict, path, prefix: str = "") -> None:
    # The schema accepts `value: null`, but the agent would pass the string "None" to the CLI.
    for name, spec in parameters.items():
        if "parameters" in spec:
            _check_no_nulls(spec["parameters"], path, f"{prefix}{name}.")
        elif spec.get("value", 0) is None or None in (spec.get("values") or []):
            raise UserError(f"{path}: parameter {prefix}{name} has a null value; "
                            "the agent would pass the string 'None'")


def grid_points(config: dict, count: int | None = None) -> list[dict]:
    """Every run the `sweeps` engine proposes, as {parameter: value} dicts, in its order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    if config["method"] not in METHODS:
        raise UserError(f"method {config['method']!r} needs a W&B server (`wandb agent`); "
                        f"the local runner runs {' and '.join(METHODS)} sweeps")
    if config["method"] == "random" and not count:
        raise UserError("a random sweep never ends: give --count")
    n = count if config["method"] == "random" else 100_000  # a grid ends itself
    runs = sweeps.next_runs(config, [], validate=True, n=n)
    return [{k: v["value"] for k, v in run.config.items()} for run in runs if run is not None]


def agent_argv(config: dict, params: dict, allow_any_command: bool = False) -> list[str]:
    """The argv `wandb agent` would run for `params` (its macros, its `${args}` formats)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    template = [str(c) for c in config.get("command") or AGENT_DEFAULT_COMMAND]
    if not allow_any_command and not is_our_cli(config):
        raise UserError(f"command {' '.join(template)!r} does not start this project's CLI "
                        "(${interpreter} -m resnext_lit ...); pass --allow-any-command to run "
                        "it anyway")
    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    # As the agent (wandb_agent.py) fills them, except that `python` from PATH becomes this
    # interpreter: the runner's own venv, however the runner was started.
    macros.update(env=["/usr/bin/env"] if os.path.exists("/usr/bin/env") else [],
                  interpreter=[sys.executable], program=[str(config.get("program", ""))])
    argv = []
    for token in template:
        if token.startswith("${") and token.endswith("}"):
            if token[2:-1] not in macros or token[2:-1] == "args_json_file":
                raise UserError(f"command macro {token} is not supported by the local runner")
            argv += [str(v) for v in macros[token[2:-1]]]
        else:
            argv.append(token)
    return argv


def is_our_cli(config: dict) -> bool:
    """Does the sweep's command start this project's CLI (so it takes --run_root/name/id)?"""
    template = [str(c) for c in config.get("command") or AGENT_DEFAULT_COMMAND]
    body = template[1:] if template[:1] == ["${env}"] else template
    return body[:3] == ["${interpreter}", *OUR_CLI]


def run_key(params: dict) -> str:
    """A stable id of one grid point, so a restarted sweep recognises its runs."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def run_folder_name(index: int, params: dict) -> str:
    label = "-".join(str(v) if k == "model.arch" else f"{k.split('.')[-1]}={v}"
                     for k, v in params.items())
    return f"{index:02d}-" + re.sub(r"[^A-Za-z0-9_.=+-]", "_", label)[:80]


def sweep_folder(config: dict, path: str, runs_dir: str) -> tuple[str, Path]:
    """The sweep's name (its `name:`, else the file's) and its folder under `runs_dir`."""
    name = str(config.get("name") or Path(path).stem)
    return name, Path(runs_dir) / "sweeps" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def run_point(path: str, index: int, fit_args: list[str], runs_dir: str = "runs",
              online: bool = False, allow_any_command: bool = False) -> int:
    """Replace this process with grid point `index`'s run (see the module docstring)."""
    config = load_sweep(path)
    if config["method"] != "grid":
        raise UserError(f"--point needs a grid sweep: a {config['method']} sweep proposes other "
                        "points at every call")
    name, sweep_dir = sweep_folder(config, path, runs_dir)
    points = grid_points(config)
    if not 0 <= index < len(points):
        raise UserError(f"--point {index}: sweep {name} has {len(points)} grid points "
                        f"(0-{len(points) - 1})")
    folder = run_folder_name(index + 1, points[index])  # the runner counts from 1
    argv = agent_argv(config, points[index], allow_any_command)
    if is_our_cli(config):
        argv += ["--run_root", str(sweep_dir), "--run_name", folder]
    argv += fit_args
    env = dict(os.environ) if online else dict(os.environ, WANDB_MODE="offline")
    if os.environ.get("SLURM_PROCID", "0") == "0":  # one line per job, not one per task
        print(f"sweep {name}: point {index} of 0-{len(points) - 1}, {folder}: "
              f"{shlex.join(argv)}", flush=True)
    os.execvpe(argv[0], argv, env)


def run_sweep(path: str, runs_dir: str = "runs", count: int | None = None, dry_run: bool = False,
              online: bool = False, allow_any_command: bool = False, parallel: int = 1,
              devices_per_run: int | None = None, stop_timeout: float = STOP_TIMEOUT_S) -> int:
    config = load_sweep(path)
    name, sweep_dir = sweep_folder(config, path, runs_dir)
    state_path = sweep_dir / "state.json"
    gpus = visible_gpus() if parallel > 1 or devices_per_run else []
    slots = gpu_slots(parallel, devices_per_run, gpus)
    threads = None  # N runs that each take every core would slow one another down
    if parallel > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, len(os.sched_getaffinity(0)) // parallel)
    with nullcontext() if dry_run else only_runner(sweep_dir, name):
        state = json.loads(state_path.read_text()) if state_path.exists() else {"runs": {}}
        state.update(sweep=str(path), name=name, config=config)
        if config["method"] == "random":  # the points drawn before, plus new ones up to --count
            points = [r["params"] for r in state["runs"].values()]
            unfinished = sum(r["status"] != "finished" for r in state["runs"].values())
            if count and count > unfinished or not points:
                points += grid_points(config, (count or 0) - unfinished)
        else:
            points = grid_points(config)
        plan = {}
        for i, params in enumerate(points, 1):
            key = run_key(params)
            entry = state["runs"].setdefault(key, {"folder": run_folder_name(i, params),
                                                   "params": params, "status": "pending"})
            entry["argv"] = agent_argv(config, params, allow_any_command)
            entry["ours"] = is_our_cli(config)  # then the runner names its runs
            plan[key] = entry
        plan = list(plan.values())
        todo = [e for e in plan if e["status"] != "finished"][:count]
        print(f"sweep {name}: {len(plan)} runs, "
              f"{sum(e['status'] == 'finished' for e in plan)} finished, {len(todo)} to run now"
              + sharing(slots, threads))
        if dry_run:
            for entry in plan:
                mark = "skip (finished)" if entry["status"] == "finished" else (
                    "run" if entry in todo else "later")
                print(f"  {entry['folder']}: {mark}\n    {shlex.join(entry['argv'])}")
            return 0
        env = dict(os.environ)
        if not online:
            env["WANDB_MODE"] = "offline"
        failures, signum = run_all(todo, slots, threads, sweep_dir, env, stop_timeout,
                                   save=lambda: write_json_atomic(state_path, state))
    offline = [e["wandb_dir"] for e in plan if e.get("wandb_dir")]
    if offline and not online:
        print(f"W&B runs are offline; upload them with: wandb sync {' '.join(offline)}")
    if signum:
        print(f"stopped by {signal.Signals(signum).name}; run the same command again to continue "
              "(interrupted runs resume from their last.ckpt)")
        return 128 + signum
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_lit sweep",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_file", help="a W&B sweep YAML, e.g. sweeps/demo_cardinality.yaml")
    parser.add_argument("--count", type=int, help="launch at most this many runs now")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, launch none")
    parser.add_argument("--runs-dir", default="runs",
                        help="the sweep's state and its runs go to <runs-dir>/sweeps/<name> "
                             "(default: runs)")
    parser.add_argument("--online", action="store_true",
                        help="let W&B try online (default: WANDB_MODE=offline)")
    parser.add_argument("--allow-any-command", action="store_true",
                        help="run a sweep whose command is not `python -m resnext_lit ...`")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="run N grid points at once, each on its own share of the visible "
                             "GPUs (default: 1)")
    parser.add_argument("--devices-per-run", type=int, metavar="K",
                        help="GPUs per run (default: the visible GPUs / N)")
    parser.add_argument("--stop-timeout", type=float, default=STOP_TIMEOUT_S, metavar="S",
                        help="after Ctrl-C, how long the runs may take to save and stop before "
                             f"they are killed (default: {STOP_TIMEOUT_S:.0f})")
    parser.add_argument("--point", type=int, metavar="I",
                        help="run grid point I (0-based, as --dry-run lists them) in this "
                             "process, with the fit options after `--` added; for SLURM job "
                             "arrays (scripts/slurm_sweep.sbatch)")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, fit_args = parser.parse_args(argv[:cut]), argv[cut + 1:]
    if args.point is not None:
        if args.point < 0:
            raise UserError("--point must be 0 or more")
        return run_point(args.sweep_file, args.point, fit_args, args.runs_dir, args.online,
                         args.allow_any_command)
    if fit_args:
        raise UserError(f"options after `--` ({shlex.join(fit_args)}) go with --point only")
    for flag in ("count", "parallel", "devices_per_run"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.stop_timeout < 0:
        raise UserError("--stop-timeout must be 0 or more seconds")
    return run_sweep(args.sweep_file, args.runs_dir, args.count, args.dry_run, args.online,
                     args.allow_any_command, args.parallel, args.devices_per_run,
                     args.stop_timeout)
