"""The LightningCLI behind `python -m resnext_lit fit|validate|test|predict`.

    python -m resnext_lit fit --config configs/imagenet_paper.yaml --model.arch resnext101_32x4d
    python -m resnext_lit fit --config configs/demo.yaml --print_config

Several `--config` files compose left to right, and `data.num_classes` (and `mean`, `std`) is
linked into the model. Checkpoints load with `weights_only=True` unless `--weights_only=false`.
`run_cli` returns the exit status; bad input raises a one-line `UserError` (`resnext_lit.errors`).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from jsonargparse import ArgumentError
from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from .checkpoints import check_checkpoint
from .errors import UserError
from .models.registry import OVERRIDES, model_config
from .nonfinite import NonFiniteError
from .reliability import ExactResume, Preempted, Preemption, requeued_version
from .schedules import check_schedule

RUNS_DIR = "runs"
DEFAULT_MAX_EPOCHS = 1000  # Lightning's when neither max_epochs nor max_steps is set


class ResNeXtCLI(LightningCLI):
    """LightningCLI with the repo's links, defaults and run bookkeeping."""

    def add_arguments_to_parser(self, parser) -> None:
        # Any LightningDataModule by class path; the embedded digits when none is given.
        parser.set_defaults({"data": {"class_path": "resnext_lit.data.digits.DigitsDataModule"}})
        for linked in ("num_classes", "mean", "std"):  # the data decides; never typed twice
            parser.link_arguments(f"data.{linked}", f"model.{linked}", apply_on="instantiate")
        # The recipe's unit is the global batch: images per device follow from the world size
        # (`resnext_lit.scale`), so no recipe changes with the number of GPUs.
        parser.add_argument("--global_batch_size", type=Optional[PositiveInt], default=None,
                            help="images per optimiser step over all devices (the paper's "
                                 "batch); sets data.batch_size = global / (devices x nodes x "
                                 "accumulate_grad_batches)")
        parser.add_argument("--paper_batch_per_device", type=Optional[PositiveInt], default=None,
                            help="the paper's per-GPU batch (its BatchNorm batch), to say when "
                                 "ours differs")

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
        # Private, checked against lightning 2.6.6 (tests/test_internals.py): no public hook
        # runs between parsing and this read, and the read must see `_trusted_torch_load`.
        sub = self.config.get("subcommand")
        config = self.config[sub] if sub else self.config
        if "weights_only" in config and config.get("weights_only") is None:
            config.weights_only = True
        path = config.get("ckpt_path")
        if path and path not in ("last", "best", "hpc") and "://" not in str(path):
            if not Path(path).is_file():
                raise UserError(f"--ckpt_path {path}: no such file")
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

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            # jsonargparse (checked on 4.53) re-raises an `__init__`'s error as "Does not validate
            # against any of the Union subtypes", with the original as its cause: find ours.
            cause = err
            while cause is not None and not isinstance(cause, UserError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise UserError(str(cause)) from None

    @property
    def run_config(self):
        """This run's config (the subcommand's, or the whole one when run=False)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self.run_config
        if config.trainer.get("enable_progress_bar") is not False:
            self.trainer_defaults["callbacks"].append(LogStepProgressBar(leave=True))
        _bf16_where_supported(config.trainer)
        if (self.subcommand == "fit" and config.trainer.get("benchmark") is None
                and not config.trainer.get("deterministic")):
            # cuDNN picks the fastest kernel per shape (grouped convs have several); the first
            # steps pay for the search. `--trainer.benchmark=false` turns it off.
            import torch

            config.trainer.benchmark = torch.cuda.is_available()
        if self.subcommand == "fit" and config.get("ckpt_path") is None:
            _resume_requeued_slurm_job(config)
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            _continue_latest_version(config)
        if config.get("ckpt_path") and config.model.get("weights"):
            # The checkpoint's network is restored after the model is built: loading the file
            # would be overwritten (and a resumed run must not need the file any more).
            print(f"note: --ckpt_path restores the network; model.weights "
                  f"{config.model.weights} is not loaded", file=sys.stderr)
            config.model.weights = None

    def before_fit(self) -> None:
        from .scale import describe, run_scale

        self._apply_global_batch()
        config, trainer = self.run_config, self.trainer
        if trainer.is_global_zero:
            print(describe(run_scale(trainer, self.datamodule, self.model.hparams.lr),
                           str(trainer.precision), config.get("global_batch_size"),
                           config.get("paper_batch_per_device")), file=sys.stderr)
        self._describe_run()

    def before_validate(self) -> None:
        # A validate run (e.g. Table 5's 320 px test) has a record too, whose `scale` is the
        # recipe's (validation itself uses the DataModule's val batch).
        self._apply_global_batch()
        self._describe_run()

    def _apply_global_batch(self) -> None:
        from .scale import apply_global_batch

        config = self.run_config
        apply_global_batch(self.datamodule, config.get("global_batch_size"),
                           self.trainer.world_size, self.trainer.accumulate_grad_batches)
        if "batch_size" in (config.data.get("init_args") or {}):  # the record shows what ran
            config.data.init_args.batch_size = self.datamodule.batch_size

    def _describe_run(self) -> None:
        from .results import ResultsWriter
        from .tracking import describe_run

        config = self.run_config
        paths = config.get("config") or []
        recipe = Path(str(paths[0])).stem if paths else None  # the first --config is the recipe
        plain = _plain(config)
        for callback in self.trainer.callbacks:
            if isinstance(callback, ResultsWriter):
                callback.config, callback.recipe = plain, recipe
        # W&B fixes a run's group when it starts, so name it before the run starts.
        describe_run(self.trainer, self.model, self.datamodule, recipe=recipe, config=plain,
                     stage=self.subcommand)


class LogStepProgressBar(RichProgressBar):
    """Rich's bar, showing the training loss as read at logging steps only.

    Lightning turns every `prog_bar=True` step metric into a Python number after every step (a
    device->host sync each), so the module logs `train/loss_step` off the bar and the bar reads
    it here, every `trainer.log_every_n_steps` steps (when the loggers read it too)."""

    _loss: float | None = None

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.training:
            loss = trainer.callback_metrics.get("train/loss_step")
            if loss is not None and (self._loss is None
                                     or trainer.global_step % trainer.log_every_n_steps == 0):
                self._loss = float(loss)
            if self._loss is not None:
                metrics["train/loss"] = self._loss
        return metrics

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Rich's bar reads the metrics here, on rank 0 only, before Lightning reduces the epoch's
        # metrics on every rank: the rank-0-only all-reduce met the other ranks' epoch-end
        # collectives and DDP hung at the first epoch end. The bar picks them up after it.
        self.refresh()


def _bf16_where_supported(trainer_config) -> None:
    """bf16 autocast needs an Ampere or newer GPU: on an older one (V100) use float16 autocast,
    which Lightning pairs with a gradient scaler, and say so."""
    import torch

    precision = str(trainer_config.get("precision"))
    if (precision == "bf16-mixed" and torch.cuda.is_available()
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        print(f"precision: {torch.cuda.get_device_name()} has no bf16: using 16-mixed "
              "(float16 autocast + gradient scaling)", file=sys.stderr)
        trainer_config.precision = "16-mixed"


@contextmanager
def _trusted_torch_load():
    """`torch.load` with weights_only=False, for a checkpoint the user said they trust: Lightning
    2.6.6's `_parse_ckpt_path` calls `torch.load(..., weights_only=True)` with no way to opt out
    (tests/test_internals.py fails if that method changes)."""
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
    """init_args of the logger that owns the run folder (the first, e.g. CSV before W&B), when
    the run's version is still to be chosen."""
    logger = config.trainer.get("logger")
    if isinstance(logger, list):  # e.g. CSV + W&B (configs/logger/wandb.yaml)
        logger = logger[0] if logger else None
    init = getattr(logger, "init_args", None)
    if init is None or init.get("version") is not None or "save_dir" not in init:
        return None
    return init


def _runs_of(init) -> Path:
    """The folder holding this run name's `version_N` folders, as Lightning's loggers name it."""
    return Path(init.save_dir) / (init.get("name") or "lightning_logs")


def _resume_requeued_slurm_job(config) -> None:
    """A requeued SLURM job reruns its script unchanged: continue the run it had started."""
    init = _run_logger_args(config)
    if init is None:
        return
    root = _runs_of(init)
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
    root = _runs_of(init)
    versions = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    resumable = [v for v in versions if (v / "checkpoints" / "last.ckpt").exists()]
    if not resumable:
        raise UserError(f"--ckpt_path last: no last.ckpt under {root}/version_*/checkpoints")
    latest = resumable[-1]
    init.version = int(latest.name.split("_")[1])
    check_checkpoint(latest / "checkpoints" / "last.ckpt", config.get("weights_only") is not False)


def run_cli(args: list[str] | None) -> int:
    """Run one trainer subcommand; the exit status: 0 done, 1 a non-finite loss, 128 + the
    signal when preempted (last.ckpt saved). Bad input raises `UserError` (one line)."""
    try:
        _lightning_cli(args)
    except ArgumentError as err:
        raise UserError(str(err)) from None
    except Preempted as stop:  # last.ckpt is saved; a scheduler sees a signal's exit status
        print(stop.message, file=sys.stderr)
        return stop.code
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _lightning_cli(args: list[str] | None) -> None:
    from lightning import LightningDataModule

    from .input_bound import DataWait
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
            # DataWait after Preemption, so Preemption's agreement steps count as compute.
            "callbacks": [
                ModelCheckpoint(monitor="val/top1_err", mode="min",
                                filename="epoch{epoch:03d}-err{val/top1_err:.2f}",
                                auto_insert_metric_name=False),
                ModelCheckpoint(filename="last", enable_version_counter=False),
                ResultsWriter(), Preemption(), ExactResume(), DataWait()]},
        save_config_kwargs={"overwrite": True},
        # Parse errors raise (and `main` prints them on one line) instead of printing usage.
        parser_kwargs={"exit_on_error": False,
                       **{sub: {"exit_on_error": False} for sub in LightningCLI.subcommands()}},
    )
