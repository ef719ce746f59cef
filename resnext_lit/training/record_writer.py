"""`results.json`: one self-contained record per `fit`, in the run's log directory.

    python -m resnext_lit fit --config configs/demo.yaml   # -> runs/demo/<run_id>/results.json

It holds what a table of the paper needs (arch, C, d, params, MACs, per-epoch errors, best and
final `val/top1_err`), what makes two runs comparable (dataset, planned epochs, the `scale`
block: world size, per-device and global batch, accumulation and the lr after scaling; the
train and val `resolution` and val crop ratio) and what makes a figure trustworthy (resolved
config, wall time, img/s, hardware, library versions). It is rewritten atomically after every
epoch, so a crashed or preempted run still leaves a valid record with its `status`. A `validate`
run (e.g. Table 5's 320 px test of a checkpoint) writes a record too, with `"stage": "validate"`,
what it scored (`"evaluated"`: the checkpoint, a weights file, or "untrained") and the training
facts of the checkpoint (`"trained"`: its planned epochs, epoch and step, scale, resolution).
`python -m resnext_lit table` reads these files.

A record states only what happened: an epoch's entry holds validation numbers only when that
epoch was validated (`check_val_every_n_epoch`, a step limit), `final` is the last validated
epoch (with its number), and a `fast_dev_run` smoke run writes no record at all.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..atomic import write_json_atomic
from ..facts import (
    code_version,
    counted_at,
    counted_network,
    dataset_name,
    environment,
    resolution,
    training_limits,
)
from ..run_identity import slurm_job_key
from .scale import run_scale

METRICS = ("train/loss", "train/top1_err", "val/loss", "val/top1_err", "val/top5_err", "lr",
           "train/images_per_s", "val/images_per_s",
           # is the run input-bound? (`resnext_lit.training.data_wait.DataWait`)
           "train/data_wait_frac", "train/data_ms_per_step", "train/compute_ms_per_step")
# A fit record's training facts, which its checkpoints carry for a later `validate` record.
TRAINED = ("run", "dataset", "recipe", "seed", "max_epochs", "max_steps", "precision", "scale",
           "resolution")


class RecordWriter(Checkpoint):
    """Writes `results.json` after every epoch of `fit`, and once after `validate` (rank 0 only).

    A `Checkpoint` subclass so that Lightning calls it after the LightningModule's own
    epoch-end hooks, like ModelCheckpoint, when every epoch metric has been logged.
    """

    def __init__(self, filename: str = "results.json"):
        self.filename = filename
        self.config: dict = {}      # the resolved CLI config, set by the CLI
        self.recipe: str | None = None
        self.run: dict = {}         # {"id", "name"} and the run's setting, set by the CLI
        self.setting: dict | None = None
        self.record: dict = {}
        self._validated = None  # the epoch whose validation ran last (fit only)
        self._checkpoint_at: dict = {}  # epoch and step of the checkpoint `validate` loaded
        self._path: Path | None = None

    @property
    def path(self) -> Path | None:
        """Where this run's record is written (known once the stage has started)."""
        return self._path

    def state_dict(self) -> dict:
        # What a `validate` record cites, as plain JSON values: jsonargparse's PositiveInt (a
        # batch size) would make the checkpoint unreadable with weights_only=True.
        trained = json.loads(json.dumps({k: self.record.get(k) for k in TRAINED}))
        return {"epochs": self.record.get("epochs", []),
                "wall_time_s": self.record.get("wall_time_s", 0.0), "run": self.run,
                "trained": trained}

    def load_state_dict(self, state: dict) -> None:
        self._restored = state  # a resumed run keeps its earlier epochs and time

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._checkpoint_at = {"epoch": checkpoint.get("epoch"),
                               "global_step": checkpoint.get("global_step")}

    def _history(self, trainer) -> dict:
        """What a resumed run already did. The record on disk is preferred: the checkpoint was
        saved at validation end, before the last epoch's entry was complete."""
        previous = getattr(self, "_restored", None)
        if previous is None:
            return {}
        if self._path.exists():
            previous = json.loads(self._path.read_text())
        return {"epochs": [e for e in previous.get("epochs", [])
                           if e["epoch"] < trainer.current_epoch],
                "wall_time_s": previous.get("wall_time_s", 0.0)}

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning restored a resumed run's loops, so current_epoch is the resumed one.
        # `log_dir` broadcasts from rank 0: every rank must ask, or DDP hangs.
        self._path = Path(trainer.log_dir or trainer.default_root_dir) / self.filename
        if not trainer.is_global_zero or trainer.fast_dev_run:  # a smoke run is no result
            return
        restored = self._history(trainer)
        self.record = self._new_record(trainer, pl_module, "fit")
        self.record.update(epochs=list(restored.get("epochs", [])),
                           wall_time_s=restored.get("wall_time_s", 0.0))
        self._start = time.perf_counter() - self.record["wall_time_s"]
        self._write(trainer)

    def _new_record(self, trainer, pl_module, stage: str) -> dict:
        data = trainer.datamodule
        hardware, versions = environment()
        return {
            "status": "running", "stage": stage, "arch": pl_module.hparams.arch,
            "model": counted_network(pl_module.model.config, counted_at(data)),
            "dataset": dataset_name(data, pl_module.hparams.num_classes),
            "run": self.run, "setting": self.setting,
            "recipe": self.recipe, "seed": self.config.get("seed_everything"),
            "config": self.config, **training_limits(trainer),
            "scale": run_scale(trainer, data, pl_module.hparams.lr)
            if getattr(data, "batch_size", None) else None,
            "resolution": resolution(data, trainer),
            "epochs": [], "best": None, "final": None, "wall_time_s": 0.0,
            "images_per_s": None, "world_size": trainer.world_size,
            "slurm_job": slurm_job_key(),  # a requeued job finds its run by it
            "hardware": hardware, "versions": versions,
            "code": code_version()}  # which code made the record (git commit, dirty or not)

    def on_test_start(self, trainer, pl_module) -> None:
        self.on_validation_start(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self.on_validation_end(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn in ("validate", "test") and not trainer.fast_dev_run:
            # `log_dir` broadcasts from rank 0: every rank must ask, or DDP hangs.
            self._path = Path(trainer.log_dir or trainer.default_root_dir) / self.filename
            self._start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        """In `fit`: which epoch was validated. A `validate` run's record: the errors of what it
        scored at this val resolution, with the checkpoint's training facts."""
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._validated = trainer.current_epoch
        if trainer.state.fn not in ("validate", "test") or not trainer.is_global_zero or \
                trainer.fast_dev_run:
            return
        stage = "test" if trainer.state.fn == "test" else "validate"
        self.record = self._new_record(trainer, pl_module, stage)
        prefix = "val" if stage == "validate" else "test"
        metrics = trainer.callback_metrics
        weights = pl_module.hparams.get("weights")
        trained = (getattr(self, "_restored", None) or {}).get("trained") or {}
        self.record.update(
            status="finished", checkpoint=trainer.ckpt_path,
            evaluated=trainer.ckpt_path or weights or "untrained",
            # The training facts are the checkpoint's, not this command's config (a torchvision
            # state dict has none: None, never the config's max_epochs).
            max_epochs=trained.get("max_epochs"), max_steps=trained.get("max_steps"),
            trained={**trained, **self._checkpoint_at} if trainer.ckpt_path
            else None,
            final={k: float(metrics[k]) for k in (f"{prefix}/top1_err", f"{prefix}/top5_err",
                                                     f"{prefix}/loss") if k in metrics})
        self._write(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or not self.record:
            return
        metrics = trainer.callback_metrics
        epoch = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                 "time_s": time.perf_counter() - self._start}
        validated = self._validated == trainer.current_epoch
        for name in METRICS:
            value = metrics.get(f"{name}_epoch", metrics.get(name))
            # Lightning keeps the last validation's numbers in callback_metrics: an epoch
            # without validation must not show them as its own.
            if value is not None and (validated or not name.startswith("val/")):
                epoch[name] = float(value)
        self.record["epochs"].append(epoch)
        self._write(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._finish(trainer, "finished")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # SIGTERMException: a preempted run (`resnext_lit.training.preemption`), resumable from
        # last.ckpt.
        stopped = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        reason = getattr(exception, "message", None) or str(exception) or type(exception).__name__
        self._finish(trainer, "interrupted" if stopped else "failed", reason.splitlines()[0])

    def _finish(self, trainer, status: str, reason: str | None = None) -> None:
        if trainer.is_global_zero and self.record:
            self.record["status"] = status
            self.record["stop_reason"] = reason
            self._write(trainer)

    def _write(self, trainer) -> None:
        record = self.record
        record["wall_time_s"] = time.perf_counter() - self._start
        evaluated = [e for e in record["epochs"] if "val/top1_err" in e]
        if evaluated:
            best = min(evaluated, key=lambda e: e["val/top1_err"])
            record["best"] = {k: best.get(k) for k in ("val/top1_err", "val/top5_err", "epoch")}
            record["final"] = {k: evaluated[-1].get(k)  # the last epoch that was validated
                               for k in ("val/top1_err", "val/top5_err", "epoch")}
        speeds = [e["train/images_per_s"] for e in record["epochs"][1:]
                  if "train/images_per_s" in e]  # epoch 0 pays for compilation and warm-up
        speeds = speeds or [e["train/images_per_s"] for e in record["epochs"]
                            if "train/images_per_s" in e]
        record["images_per_s"] = sum(speeds) / len(speeds) if speeds else None
        write_json_atomic(self._path, record)
