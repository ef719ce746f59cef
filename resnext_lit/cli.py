"""Command line entry point: `python -m resnext_lit <command> ...`.

    python -m resnext_lit fit --config configs/imagenet_paper.yaml --model.arch resnext101_32x4d
    python -m resnext_lit fit --config configs/demo.yaml --print_config
    python -m resnext_lit validate --config configs/demo.yaml --ckpt_path runs/.../best.ckpt
    python -m resnext_lit models            # the zoo with params, MACs and the paper's errors
    python -m resnext_lit summary runs/demo # the newest run's record (results.json)

`fit|validate|test|predict` are a LightningCLI (jsonargparse): several `--config` files
compose left to right, and `data.num_classes` is linked into `model.num_classes`. User errors
(an unknown arch, a bad schedule, an unreadable checkpoint, ...) end in one line and exit status
2, before any training. A preempted run (SIGTERM, SIGUSR1) exits with 128 + the signal after
saving last.ckpt; a non-finite loss with 1 (see `resnext_lit.reliability`). Checkpoints load with
`weights_only=True` unless `--weights_only=false`.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from .models.registry import OVERRIDES, model_config
from .checkpoints import NonFiniteError, check_checkpoint
from .reliability import ExactResume, Preempted, Preemption, requeued_version
from .schedules import check_schedule

# Each tool command lives in its own module with a `main(argv) -> int`.
COMMANDS = {
    "models": "resnext_lit.models.table",
    "summary": "resnext_lit.summary",
    "write-beton": "resnext_lit.data.beton",
    "sweep": "resnext_lit.sweep",
    "table": "resnext_lit.table",
    "dashboard": "resnext_lit.dashboard",
    "bench": "resnext_lit.bench",
}
TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
RUNS_DIR = "runs"
DEFAULT_MAX_EPOCHS = 1000  # Lightning's when neither max_epochs nor max_steps is set


class ResNeXtCLI(LightningCLI):
    """LightningCLI with the repo's links, defaults and run bookkeeping."""

    def add_arguments_to_parser(self, parser) -> None:
        # Any LightningDataModule by class path; the embedded digits when none is given.
        parser.set_defaults({"data": {"class_path": "resnext_lit.data.digits.DigitsDataModule"}})
        for linked in ("num_classes", "mean", "std"):  # the data decides; never typed twice
            parser.link_arguments(f"data.{linked}", f"model.{linked}", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # Check what can be checked from the config alone, before the seed, the Trainer or any
        # data exist, so a typo costs one line and no start-up.
        sub = self.config.get("subcommand")
        config = self.config[sub] if sub else self.config
        model, trainer = config.model, config.trainer
        model_config(model.arch, **{k: model.get(k) for k in OVERRIDES if k != "num_classes"})
        if sub == "fit" and not trainer.get("fast_dev_run"):
            check_schedule(model.schedule, trainer.get("max_epochs") or DEFAULT_MAX_EPOCHS,
                           model.milestones, model.warmup_epochs, model.peak_epoch)

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the model's hparams from a --ckpt_path file here: check the file first
        # (one line for a truncated or unsafe one), with weights_only=True unless opted out.
        sub = self.config.get("subcommand")
        config = self.config[sub] if sub else self.config
        if "weights_only" in config and config.get("weights_only") is None:
            config.weights_only = True
        path = config.get("ckpt_path")
        if path and path not in ("last", "best", "hpc") and "://" not in str(path):
            if not Path(path).is_file():
                raise ValueError(f"--ckpt_path {path}: no such file")
            check_checkpoint(path, config.weights_only is not False)
        given = dict(config.model)
        if config.weights_only is False:  # trusted: Lightning would read it weights_only
            with _trusted_torch_load():
                super()._parse_ckpt_path()
        else:
            super()._parse_ckpt_path()
        config = self.config[sub] if sub else self.config
        # Lightning builds the model from the checkpoint's hparams, over the config and the
        # command line: say which of the user's model settings lost, rather than drop them.
        replaced = [f"model.{key}={config.model[key]!r} (not {value!r})"
                    for key, value in given.items() if value is not None
                    and key in config.model and config.model[key] != value]
        if replaced:
            print(f"warning: --ckpt_path {path} builds the model from its own hyperparameters: "
                  f"{', '.join(replaced)}", file=sys.stderr)

    @property
    def run_config(self):
        """This run's config (the subcommand's, or the whole one when run=False)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self.run_config
        if config.trainer.get("enable_progress_bar") is not False:
            self.trainer_defaults["callbacks"].append(RichProgressBar(leave=True))
        if self.subcommand == "fit" and config.get("ckpt_path") is None:
            _resume_requeued_slurm_job(config)
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            _continue_latest_version(config)

    def before_fit(self) -> None:
        from .results import ResultsWriter
        from .tracking import describe_run

        config = self.run_config
        paths = config.get("config") or []
        recipe = Path(str(paths[0])).stem if paths else None  # the first --config is the recipe
        plain = _plain(config)
        for callback in self.trainer.callbacks:
            if isinstance(callback, ResultsWriter):
                callback.config, callback.recipe = plain, recipe
        # W&B fixes a run's group when it starts, so name it before fit starts the run.
        describe_run(self.trainer, self.model, self.datamodule, recipe=recipe, config=plain)


@contextmanager
def _trusted_torch_load():
    """`torch.load` with weights_only=False, for a checkpoint the user said they trust."""
    import torch

    load = torch.load
    torch.load = lambda *args, **kwargs: load(*args, **{**kwargs, "weights_only": False})
    try:
        yield
    finally:
        torch.load = load


def _plain(config) -> dict:
    """The resolved config as JSON-friendly builtins (for results.json and W&B)."""
    as_dict = config.clone().as_dict()
    as_dict.pop("config", None)
    return as_dict


def _run_logger_args(config):
    """init_args of the logger that owns the run folder (the first, e.g. CSV before W&B)."""
    logger = config.trainer.get("logger")
    if isinstance(logger, list):  # e.g. CSV + W&B (configs/logger/wandb.yaml)
        logger = logger[0] if logger else None
    init = getattr(logger, "init_args", None)
    if init is None or init.get("version") is not None or "save_dir" not in init:
        return None
    return init


def _resume_requeued_slurm_job(config) -> None:
    """A requeued SLURM job reruns its script unchanged: continue the run it had started."""
    init = _run_logger_args(config)
    if init is None:
        return
    root = Path(init.save_dir) / (init.get("name") or "lightning_logs")
    version = requeued_version(root)
    if version is not None:
        print(f"SLURM job {os.environ['SLURM_JOB_ID']} restarted: resuming "
              f"{root}/version_{version}", file=sys.stderr)
        config.ckpt_path = "last"


def _continue_latest_version(config) -> None:
    """`fit --ckpt_path last` continues the newest run of this name in its own folder.

    Lightning looks for `last.ckpt` in the logger's folder, and a new run would get a new
    version folder (so it would find nothing and silently start from scratch).
    """
    init = _run_logger_args(config)
    if init is None:
        return
    root = Path(init.save_dir) / (init.get("name") or "lightning_logs")
    versions = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not any((v / "checkpoints" / "last.ckpt").exists() for v in versions):
        raise ValueError(f"--ckpt_path last: no last.ckpt under {root}/version_*/checkpoints")
    latest = [v for v in versions if (v / "checkpoints" / "last.ckpt").exists()][-1]
    init.version = int(latest.name.split("_")[1])
    check_checkpoint(latest / "checkpoints" / "last.ckpt", config.get("weights_only") is not False)


def run_cli(args: list[str] | None) -> None:
    from lightning import LightningDataModule

    from .module import ResNeXtModule
    from .results import ResultsWriter

    ResNeXtCLI(
        ResNeXtModule, LightningDataModule, subclass_mode_data=True, args=args,
        trainer_defaults={
            "default_root_dir": RUNS_DIR,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": RUNS_DIR, "name": "default"}},
            # Persistent callbacks: the ModelCheckpoints must come before ResultsWriter (see it).
            # last.ckpt has its own: Lightning 2.6 refreshes a monitoring ModelCheckpoint's
            # save_last file only in epochs that improved the metric.
            "callbacks": [
                ModelCheckpoint(monitor="val/top1_err", mode="min",
                                filename="epoch{epoch:03d}-err{val/top1_err:.2f}",
                                auto_insert_metric_name=False),
                ModelCheckpoint(filename="last", enable_version_counter=False),
                ResultsWriter(), Preemption(), ExactResume()]},
        save_config_kwargs={"overwrite": True},
        # Parse errors raise (and `main` prints them on one line) instead of printing usage.
        parser_kwargs={"exit_on_error": False,
                       **{sub: {"exit_on_error": False} for sub in TRAINER_SUBCOMMANDS}},
    )


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


def main(argv: list[str] | None = None) -> int:
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m resnext_lit {" + ",".join((*TRAINER_SUBCOMMANDS, *COMMANDS))
              + "} ...")
        return 0 if argv else 2
    command = argv[0]
    if command not in COMMANDS and command not in TRAINER_SUBCOMMANDS:
        print(f"error: unknown command {command!r}; choose from "
              f"{', '.join((*TRAINER_SUBCOMMANDS, *COMMANDS))}", file=sys.stderr)
        return 2
    code = 1  # unless set below: an unexpected exception leaves with its traceback
    try:
        if command in COMMANDS:
            code = importlib.import_module(COMMANDS[command]).main(argv[1:])
        else:
            run_cli(None if from_sys else argv)
            code = 0
    except (ValueError, ArgumentError) as err:  # user errors are one line, not a traceback
        print(f"error: {one_line(err)}", file=sys.stderr)
        code = 2
    except Preempted as stop:  # last.ckpt is saved; a scheduler sees a signal's exit status
        print(stop.message, file=sys.stderr)
        code = stop.code
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 1
    except SystemExit as stop:  # Lightning's Ctrl-C path, argparse
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        raise
    finally:
        _finish_wandb(code)
    return code


def _finish_wandb(code: int) -> None:
    """Close a W&B run of a failed command with its exit status: wandb 0.31 no longer hooks
    sys.exit, so it would record a crashed or preempted run as finished (exit code 0)."""
    run = getattr(sys.modules.get("wandb"), "run", None)  # never imports wandb itself
    if run is not None and code:
        run.finish(exit_code=code)
