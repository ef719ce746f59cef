"""What a run prints: the network in one line, the run's files at the end, and none of the
upstream messages that say nothing about this run.

    python -m resnext_lit fit --config configs/demo.yaml
    # network: resnext11_8x4d (11 layers, C=8, d=4, form c): 0.97 M params, 0.04 G MACs at 16 px
    # ... one line per epoch ...
    # run demo/<id> fit done: runs/demo/<id> (checkpoints: checkpoints/{epoch009-err3.06.ckpt,
    #     last.ckpt}; record: results.json)

Lightning's model summary is off (`enable_model_summary: false` in the CLI's defaults): its
FLOPs column reads 0 for our network and it lists the metric objects as layers; the network line
counts with the same counter as `results.json` and `models` (`resnext_lit.models.flops`).
"""

from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

# Upstream messages silenced, each with where it comes from and why it says nothing about a run
# of this repo: (how it is emitted, its source under site-packages, how it starts, why).
# Checked against lightning 2.6.6 and torch 2.14.1; tests/test_internals.py finds each one in
# the installed source, so a changed message shows up there instead of slipping through.
UPSTREAM_NOISE = [
    ("info", "lightning/pytorch/trainer/setup.py", "TPU available:",
     "no machine this repo runs on has TPUs; the GPU line stays"),
    ("info", "lightning/pytorch/trainer/connectors/logger_connector/logger_connector.py",
     "💡 Tip: For seamless cloud logging", "an advert for a logger this repo does not use"),
    ("info", "lightning/pytorch/trainer/connectors/callback_connector.py",
     "💡 Tip: For seamless cloud uploads", "an advert for a checkpoint service"),
    ("warning", "torch/utils/_pytree.py", "`isinstance(treespec, LeafSpec)` is deprecated",
     "torch 2.14 deprecates a class lightning 2.6.6's _pytree.py builds at every step"),
    ("warning", "lightning/pytorch/trainer/connectors/data_connector.py",
     "You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a "
     "`LightningDataModule`",
     "by design: the module's batch transforms (MixUp/CutMix on the device) run after the "
     "transfer; no DataModule here defines the hook"),
    ("warning", "lightning/pytorch/callbacks/model_checkpoint.py", "Checkpoint directory",
     "a resumed run writes into its own checkpoints folder by design (run identity)"),
    ("warning", "lightning/pytorch/callbacks/model_checkpoint.py", "The dirpath has changed from",
     "validate/test/predict of another run's checkpoint write into their own run folder"),
    ("warning", "lightning/fabric/plugins/environments/slurm.py",
     "The `srun` command is available on your system",
     "said for every run outside a SLURM job once SLURM's client tools are installed"),
]


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(kind == "info" and message.startswith(start)
                       for kind, _, start, _ in UPSTREAM_NOISE)


@contextmanager
def quiet_upstream():
    """Silence `UPSTREAM_NOISE` while the block runs (the CLI's run); as it was afterwards."""
    # Lightning's rank_zero_info goes through the logger of whichever rank_zero module set it.
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch.utilities.rank_zero",
                                                    "lightning.fabric.utilities.rank_zero")]
    drop = _DropInfo()
    with warnings.catch_warnings():
        for kind, _, start, _ in UPSTREAM_NOISE:
            if kind == "warning":
                warnings.filterwarnings("ignore", message=re.escape(start))
        for logger in loggers:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(drop)


def network_line(arch: str, facts: dict) -> str:
    """One line for the network: its settings in the paper's terms and its complexity."""
    return (f"network: {arch} ({facts['depth']} layers, C={facts['cardinality']}, "
            f"d={facts['bottleneck_width']}, form {facts['form']}): "
            f"{facts['params'] / 1e6:.2f} M params, {facts['macs'] / 1e9:.2f} G MACs at "
            f"{facts['image_size']} px")


def files_line(run, trainer, stage: str) -> str:
    """The last line of a `fit`, `validate` or `test`: where the run's folder, checkpoints (fit)
    and record are (only those that exist). Checkpoints are named under the first
    ModelCheckpoint's folder: the built-ins share it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .record_writer import RecordWriter

    folder = Path(run.folder)
    # validate/test restore the checkpoint callbacks' state of the run they score: not theirs.
    saved = sorted({Path(path).name for callback in trainer.callbacks
                    if stage == "fit" and isinstance(callback, ModelCheckpoint)
                    for path in (callback.best_model_path, callback.last_model_path)
                    if path and Path(path).exists()})
    records = [callback.path for callback in trainer.callbacks
               if isinstance(callback, RecordWriter) and callback.path
               and callback.path.exists()]
    parts = []
    if saved:
        where = Path(trainer.checkpoint_callback.dirpath)
        parts.append(f"checkpoints: {_under(where, folder)}/{{{', '.join(saved)}}}"
                     if len(saved) > 1 else f"checkpoints: {_under(where / saved[0], folder)}")
    if records:
        parts.append(f"record: {_under(records[0], folder)}")
    detail = f" ({'; '.join(parts)})" if parts else ""
    return f"run {run.name}/{run.id} {stage} done: {folder}{detail}"


def _under(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return str(path)
