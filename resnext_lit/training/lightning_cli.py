"""The LightningCLI behind `python -m resnext_lit fit|validate|test|predict`.

    python -m resnext_lit fit --config configs/imagenet_paper.yaml --model.arch resnext101_32x4d
    python -m resnext_lit fit --config configs/demo.yaml --print_config
    python -m resnext_lit fit --config configs/demo.yaml --builtins.data_wait null   # one off

Several `--config` files compose left to right, and `data.num_classes` (and `mean`, `std`) is
linked into the model. Checkpoints load with `weights_only=True` unless `--weights_only=false`.
The repo's own callbacks (`BUILTINS`: checkpoints, the run's record, preemption, exact resume,
the data-wait split, the progress bar, `predict`'s CSV) are config keys under `builtins`, each on
unless set to null; `trainer.callbacks` adds others, which run before them. `run_cli` returns
the exit status; bad input raises a one-line `UserError` (`resnext_lit.errors`).
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml
from jsonargparse import ArgumentError
from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from ..errors import UserError
from ..facts import counted_at, counted_network, resolution
from ..models.registry import OVERRIDES, model_config
from ..run_identity import hold, let_go, setting_difference, setting_of
from ..wandb_access import close_run
from .checkpoints import BEST_CHECKPOINT, LAST_CHECKPOINT, check_checkpoint, use_atomic_checkpoints
from .console import files_line, network_line, quiet_upstream
from .data_wait import DataWait
from .nonfinite import NonFiniteError
from .predictions import PredictionWriter, fill_predict_data
from .preemption import Preempted, Preemption, slurm_requeue
from .progress import LogStepProgressBar
from .record_writer import RecordWriter
from .resume import ExactResume
from .run import announce, forget_run, which_run
from .schedules import check_schedule

RUNS_DIR = "runs"
# jsonargparse's restricted numbers (PositiveInt, ...) are int/float subclasses, which PyYAML's
# safe dumper refuses ("cannot represent an object"): a value a recipe's data class typed so and a
# later --config carried over to another class (FFCV's `seed`, then configs/demo.yaml's digits)
# broke the check and --print_config. Written as the plain numbers they are.
yaml.SafeDumper.add_multi_representer(int, yaml.SafeDumper.represent_int)
yaml.SafeDumper.add_multi_representer(float, yaml.SafeDumper.represent_float)
DEFAULT_MAX_EPOCHS = 1000  # Lightning's when neither max_epochs nor max_steps is set
# The repo's own callbacks: `builtins.<key>` -> (class, init_args). In this order, after the
# config's `trainer.callbacks`: the ModelCheckpoints before the record (see `RecordWriter`), and
# the data-wait split after preemption, so Preemption's agreement steps count as compute.
BUILTINS = {"best_checkpoint": (ModelCheckpoint, BEST_CHECKPOINT),
            "last_checkpoint": (ModelCheckpoint, LAST_CHECKPOINT),
            "record": (RecordWriter, {}), "preemption": (Preemption, {}),
            "exact_resume": (ExactResume, {}), "data_wait": (DataWait, {}),
            "progress_bar": (LogStepProgressBar, {}),
            "predictions": (PredictionWriter, {})}  # predict only: <run folder>/predictions.csv


class ResNeXtCLI(LightningCLI):
    """LightningCLI with the repo's links, defaults and run bookkeeping. `cleanup`: an
    ExitStack the caller closes after the command, however it ended (the run's lock)."""

    def __init__(self, *args, cleanup: ExitStack, **kwargs):
        self.cleanup = cleanup
        super().__init__(*args, **kwargs)  # LightningCLI runs the whole command in here

    def add_arguments_to_parser(self, parser) -> None:
        # Any LightningDataModule by class path; the embedded digits when none is given.
        parser.set_defaults({"data": {"class_path": "resnext_lit.data.digits.DigitsDataModule"}})
        for linked in ("num_classes", "mean", "std"):  # the data decides; never typed twice
            parser.link_arguments(f"data.{linked}", f"model.{linked}", apply_on="instantiate")
        # The recipe's unit is the global batch: images per device follow from the world size
        # (`resnext_lit.training.scale`), so no recipe changes with the number of GPUs.
        parser.add_argument("--global_batch_size", type=PositiveInt | None, default=None,
                            help="images per optimiser step over all devices (the paper's "
                                 "batch); sets data.batch_size = global / (devices x nodes x "
                                 "accumulate_grad_batches)")
        # The run's identity (`resnext_lit.run_identity`): its folder is run_root/run_name/run_id,
        # and the loggers (CSV version, W&B name and id) are set from these three.
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="names the run's folder and its W&B run (default: the recipe, "
                                 "the first --config file's name)")
        parser.add_argument("--run_id", type=str | None, default=None,
                            help="the run to resume or start (default: a new id, or the run "
                                 "--ckpt_path names)")
        parser.add_argument("--run_root", type=str, default=RUNS_DIR,
                            help="where runs live: <run_root>/<run_name>/<run_id>/")
        parser.add_argument("--checkpoint_every_minutes", type=float | None, default=None,
                            help="also write last.ckpt every N minutes of training, mid-epoch "
                                 "(a hard kill then loses at most N minutes); default: at each "
                                 "epoch's end and on a stop signal only")
        parser.add_argument("--paper_batch_per_device", type=PositiveInt | None, default=None,
                            help="the paper's per-GPU batch (its BatchNorm batch), to say when "
                                 "ours differs")
        for key, (callback, init_args) in BUILTINS.items():
            parser.add_subclass_arguments(callback, f"builtins.{key}", required=False,
                                          fail_untyped=False)
            parser.set_defaults({f"builtins.{key}": {
                "class_path": f"{callback.__module__}.{callback.__qualname__}",
                "init_args": init_args}})

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # Check what can be checked from the config alone, before the seed, the Trainer or any
        # data exist, so a typo costs one line and no start-up.
        sub = self.config.get("subcommand")
        config = self.config[sub] if sub else self.config
        model, trainer = config.model, config.trainer
        model_config(model.arch, **{k: model.get(k) for k in OVERRIDES if k != "num_classes"})
        every = config.get("checkpoint_every_minutes")
        if every is not None and not every > 0:
            raise UserError(f"--checkpoint_every_minutes must be > 0, got {every}")
        if sub == "fit" and not trainer.get("fast_dev_run"):
            epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
            if epochs in (None, -1) and steps in (None, -1):
                if epochs == -1:
                    raise UserError("trainer.max_epochs=-1 trains for ever: set "
                                    "trainer.max_steps too (the lr schedule needs an end)")
                epochs = DEFAULT_MAX_EPOCHS  # Lightning's default
            if epochs not in (None, -1):  # else sized from max_steps once the data is loaded
                check_schedule(model.schedule, epochs, model.milestones, model.warmup_epochs,
                               model.peak_epoch)
        self.run = which_run(config, sub or "fit")


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
        if sub == "fit" and path:
            # Continuing a run of another network would train the file's network under this
            # command's name (or fail on the first tensor): refuse before anything is written.
            theirs = setting_of(dict(config.model), None, None, None)["network"]
            mine = setting_of(given, None, None, None)["network"]
            if theirs != mine:
                raise UserError(f"--ckpt_path {path} holds another network: "
                                f"{setting_difference(mine, theirs)}")
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

    def instantiate_trainer(self, **kwargs):
        """The Trainer with the config's callbacks, then the built-ins that are on; every
        checkpoint written atomically (`resnext_lit.training.checkpoints`)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        builtins = [config.get(f"builtins.{key}") for key in BUILTINS
                    if not (key == "progress_bar"
                            and config.trainer.get("enable_progress_bar") is False)]
        callbacks = [*(config.trainer.get("callbacks") or []), *filter(None, builtins)]
        trainer = super().instantiate_trainer(callbacks=callbacks, **kwargs)
        use_atomic_checkpoints(trainer)
        return trainer

    def before_instantiate_classes(self) -> None:
        config = self.run_config
        _bf16_where_supported(config.trainer)
        _check_rendezvous(config.trainer)
        if (self.subcommand == "fit" and config.trainer.get("benchmark") is None
                and not config.trainer.get("deterministic")):
            # cuDNN picks the fastest kernel per shape (grouped convs have several); the first
            # steps pay for the search. `--trainer.benchmark=false` turns it off.
            import torch

            config.trainer.benchmark = torch.cuda.is_available()
        if self.subcommand == "predict":  # a trained network; a folder's classes from its file
            fill_predict_data(config)
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
        if trainer.is_global_zero:  # the run's folder is this process's until the command ends
            lock = hold(self.run.folder)
            self.cleanup.callback(let_go, lock, self.run.folder)
        for callback in trainer.callbacks:
            if isinstance(callback, Preemption):
                callback.save_every(config.get("checkpoint_every_minutes"))
        if trainer.is_global_zero:
            print(describe(run_scale(trainer, self.datamodule, self.model.hparams.lr),
                           str(trainer.precision), config.get("global_batch_size"),
                           config.get("paper_batch_per_device")), file=sys.stderr)
            size = resolution(self.datamodule, trainer)["train"] or counted_at(self.datamodule)
            print(network_line(self.model.hparams.arch,
                               counted_network(self.model.model.config, size)), file=sys.stderr)
        self._describe_run()

    def after_fit(self) -> None:
        self._say_files("fit")

    def after_validate(self) -> None:
        self._say_files("validate")

    def after_test(self) -> None:
        self._say_files("test")

    def _say_files(self, stage: str) -> None:
        if self.trainer.is_global_zero and self.trainer.state.finished:
            print(files_line(self.run, self.trainer, stage), file=sys.stderr)

    def before_validate(self) -> None:
        # A validate run (e.g. Table 5's 320 px test) has a record too, whose `scale` is the
        # recipe's (validation itself uses the DataModule's val batch).
        self._apply_global_batch()
        config = self.run_config
        if self.trainer.is_global_zero and not (config.get("ckpt_path")
                                                or config.model.get("weights")):
            print(f"{self.subcommand}: no --ckpt_path and no --model.weights: scoring an "
                  "untrained network (its record says so; tables never average it)",
                  file=sys.stderr)
        self._describe_run()

    before_test = before_validate  # the same evaluation, on the test split

    def before_predict(self) -> None:
        # `PredictionWriter` keeps each batch's top-k rows: Lightning need not also hold every
        # batch's probabilities (all classes) unless --return_predictions true asks.
        self._apply_global_batch()
        config = self.config_init[self.subcommand]
        if config.get("return_predictions") is None:
            config.return_predictions = False
        if self.trainer.is_global_zero:
            announce(self.run)

    def _apply_global_batch(self) -> None:
        from .scale import apply_global_batch

        config = self.run_config
        apply_global_batch(self.datamodule, config.get("global_batch_size"),
                           self.trainer.world_size, self.trainer.accumulate_grad_batches)
        if "batch_size" in (config.data.get("init_args") or {}):  # the record shows what ran
            config.data.init_args.batch_size = self.datamodule.batch_size

    def _describe_run(self) -> None:
        from .wandb_logger import describe_run

        config = self.run_config
        paths = config.get("config") or []
        recipe = Path(str(paths[0])).stem if paths else None  # the first --config is the recipe
        plain = _plain(config)
        if self.trainer.is_global_zero:  # after every check of the input: bad input is one line
            announce(self.run)
        run = {"id": self.run.id, "name": self.run.name}
        for callback in self.trainer.callbacks:
            if isinstance(callback, RecordWriter):
                callback.config, callback.recipe = plain, recipe
                callback.run, callback.setting = run, self.run.setting
        # W&B fixes a run's group when it starts, so name it before the run starts.
        describe_run(self.trainer, self.model, self.datamodule, recipe=recipe, config=plain,
                     stage=self.subcommand, run=run)


def _check_rendezvous(trainer_config) -> None:
    """Under a SLURM job step, DDP meets at the first node of SLURM_NODELIST (Lightning's
    `SLURMEnvironment`) unless MASTER_ADDR is set; a name that does not resolve makes torch's
    rendezvous retry forever ("The IPv6 network addresses of (n1, ...) cannot be retrieved").
    One line instead, before anything starts."""
    import socket

    from lightning.fabric.plugins.environments import SLURMEnvironment

    ddp = "ddp" in str(trainer_config.get("strategy")) or int(os.environ.get("SLURM_NTASKS",
                                                                                "1")) > 1
    if os.environ.get("MASTER_ADDR") or not ddp or not SLURMEnvironment.detect():
        return
    host = SLURMEnvironment.resolve_root_node_address(os.environ.get("SLURM_NODELIST", ""))
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        raise UserError(f"SLURM node {host!r}, where DDP's ranks would meet (the first of "
                        "SLURM_NODELIST), does not resolve here: give the job MASTER_ADDR=<its "
                        "address> (sbatch --export=ALL,MASTER_ADDR=...)") from None


class SaveConfigAfterRestore(SaveConfigCallback):
    """Lightning's config.yaml writer, which in `fit` writes once the checkpoint is restored
    (`on_fit_start`) rather than at setup: a resume refused while restoring (another world
    size mid-epoch) leaves the run's folder exactly as it was."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer, pl_module) -> None:
        super().setup(trainer, pl_module, "fit")


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


def run_cli(args: list[str] | None) -> int:
    """Run one trainer subcommand; the exit status: 0 done, 1 a non-finite loss, 128 + the
    signal when preempted (last.ckpt saved). Bad input raises `UserError` (one line)."""
    try:
        _lightning_cli(args)
    except ArgumentError as err:
        raise UserError(str(err)) from None
    except Preempted as stop:  # last.ckpt is saved; a scheduler sees a signal's exit status
        close_run(stop.code)  # before the requeue: its SIGTERM reaches W&B's service process
        then = f"; {slurm_requeue()}" if stop.requeue else ""
        print(stop.message + then, file=sys.stderr)
        return stop.code
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        forget_run()
    return 0


def _lightning_cli(args: list[str] | None) -> None:
    from lightning import LightningDataModule

    with quiet_upstream(), ExitStack() as cleanup:  # console.py says why quiet
        from .module import ResNeXtModule

        ResNeXtCLI(
            ResNeXtModule, LightningDataModule, subclass_mode_data=True, args=args,
            cleanup=cleanup,
            # The module's configure_optimizers is the recipe's (SGD, its schedule, per-step lr):
            # no --optimizer/--lr_scheduler that would replace it with one Lightning warning.
            auto_configure_optimizers=False,
            trainer_defaults={
                "default_root_dir": RUNS_DIR,
                # Its FLOPs column reads 0 and it lists the metrics as layers: the CLI prints the
                # network's line instead (`console.network_line`).
                "enable_model_summary": False,
                "logger": {"class_path": "resnext_lit.training.csv_logger.CSVLogger"}},
            save_config_callback=SaveConfigAfterRestore, save_config_kwargs={"overwrite": True},
            # Parse errors raise (and `main` prints them on one line) instead of printing usage.
            # allow_abbrev=False: --trainer.max_epoch must not quietly mean max_epochs.
            parser_kwargs={"exit_on_error": False, "prog": "python -m resnext_lit",
                           "allow_abbrev": False,
                           **{sub: {"exit_on_error": False, "allow_abbrev": False}
                              for sub in LightningCLI.subcommands()}},
        )
