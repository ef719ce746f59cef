"""Command line entry point: `python -m resnext_lit <command> ...`.

    python -m resnext_lit fit --config configs/imagenet_paper.yaml --model.arch resnext101_32x4d
    python -m resnext_lit fit --config configs/demo.yaml --print_config
    python -m resnext_lit validate --config configs/demo.yaml --ckpt_path runs/.../best.ckpt
    python -m resnext_lit models            # the zoo with params, MACs and the paper's errors
    python -m resnext_lit summary runs/demo # the newest run's record (results.json)

`fit|validate|test|predict` are a LightningCLI (`resnext_lit.training.lightning_cli`); the other
commands are tools with a `main(argv) -> int` each, started without importing Lightning (seconds
sooner).
User errors (`resnext_lit.errors.UserError`: an unknown arch, a bad schedule, an unreadable
checkpoint, ...) end in one line and exit status 2, before any training; every other exception is
a bug and keeps its traceback. A preempted run (SIGTERM, SIGUSR1) exits with 128 + the
signal after saving last.ckpt (`resnext_lit.training.preemption`); a non-finite loss with 1
(`resnext_lit.training.nonfinite`).
"""

from __future__ import annotations

import importlib
import os
import re
import sys

from .errors import UserError
from .process import STOP_SIGNALS, kept
from .wandb_access import close_run

# Each tool command lives in its own module with a `main(argv) -> int`.
COMMANDS = {
    "models": "resnext_lit.models.zoo",
    "summary": "resnext_lit.experiments.summary",
    "write-beton": "resnext_lit.data.beton",
    "sweep": "resnext_lit.experiments.sweep",
    "table": "resnext_lit.experiments.table",
    "dashboard": "resnext_lit.experiments.dashboard",
    "bench": "resnext_lit.bench",
}
TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")  # LightningCLI.subcommands()
STOPPED_BY_SIGNAL = {128 + signum for signum in STOP_SIGNALS}  # a preempted run's exit status
# `python -m resnext_lit help`: one line per command (each answers `<command> --help`).
HELP = {
    "fit": "train a network from a recipe (--config configs/<recipe>.yaml)",
    "validate": "score a checkpoint (--ckpt_path) or a weights file (--model.weights) on val",
    "test": "score a checkpoint or weights file on the DataModule's test split",
    "predict": "top-5 classes per image of a val split or a folder -> predictions.csv",
    "models": "the zoo: every network with params, MACs and the paper's errors",
    "summary": "what the newest training run under a folder did (its results.json)",
    "write-beton": "write an image folder as an FFCV .beton with its sidecar",
    "sweep": "run a sweep file's grid here (or list it with --dry-run); one point per --point",
    "table": "the paper's tables and figures from run records, ours beside the paper's",
    "dashboard": "a shared W&B dashboard (Report) for a project's runs",
    "bench": "throughput benchmarks: loader, training loop, GPU (ratios against a baseline)",
}


def usage() -> str:
    width = max(map(len, HELP))
    return "\n".join(["usage: python -m resnext_lit <command> [options]   "
                      "(<command> --help for its options)", "", "commands:",
                      *(f"  {name:<{width}}  {text}" for name, text in HELP.items())])


def one_line(message: str) -> str:
    """jsonargparse explains a bad value as a nested tree; keep the key path and the reason."""
    keys, structural = [], ("Does not validate", "Subtypes:", "Errors:", "- Problem with")
    for line in (line.strip() for line in str(message).splitlines()):
        match = re.match(r'Parser key "([^"]+)":\s*(.*)', line)
        if match:
            keys.append(match.group(1))
            line = match.group(2)
        if line and not line.startswith(structural):
            where = f'"{".".join(keys)}": ' if keys else ""
            return f"{where}{re.sub(r'^- ', '', line)}"  # a bullet, not an option's dashes
    return str(message).strip().splitlines()[0]


def run() -> None:
    """`python -m resnext_lit` and the `resnext-lit` console script: main's status as exit code.
    A run stopped by a signal keeps ignoring SIGTERM/SIGUSR1 until this process exits."""
    sys.exit(_main(None, exiting=True))


def main(argv: list[str] | None = None) -> int:
    """Run one command (argv as after `python -m resnext_lit`; None: sys.argv) and return its
    exit status. The process is left as it was found, however the command ends: signal
    handlers, environment variables, warning filters and torch flags (`resnext_lit.process`)."""
    return _main(argv, exiting=False)


def _main(argv: list[str] | None, exiting: bool) -> int:
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command = argv[0]
    if command not in COMMANDS and command not in TRAINER_SUBCOMMANDS:
        print(f"error: unknown command {command!r}; choose from "
              f"{', '.join((*TRAINER_SUBCOMMANDS, *COMMANDS))}", file=sys.stderr)
        return 2
    code = 1  # unless set below: an unexpected exception leaves with its traceback
    with kept() as process:
        try:
            if command in COMMANDS:
                code = importlib.import_module(COMMANDS[command]).main(argv[1:])
            else:
                from .training.lightning_cli import run_cli  # Lightning loads for these only

                code = run_cli(None if from_sys else argv)
        except UserError as err:  # bad input is one line; any other exception keeps its traceback
            if _rank() == 0:  # every DDP rank meets the same bad input: one of them says it
                print(f"error: {one_line(err)}", file=sys.stderr)
            code = 2
        except SystemExit as stop:  # Lightning's Ctrl-C path, argparse
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            raise
        finally:
            close_run(code)
            if exiting and command in TRAINER_SUBCOMMANDS and code in STOPPED_BY_SIGNAL:
                process.keep_ignoring_stops()  # saved and closed: the first signal's status
    return code


def _rank() -> int:
    """This process's global rank as its launcher set it (Lightning, torchrun, SLURM); 0 alone."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0
