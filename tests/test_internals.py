"""Every private internal of Lightning and wandb that resnext_lit relies on, pinned.

Each row names a private method or attribute, the code of ours that relies on it, and a
fingerprint of its source in the version we checked (lightning 2.6.6, the pin in
requirements.txt). An upgrade that changes one fails here, naming what to re-check, instead of
the reliance breaking silently (a swap that no longer swaps, a check that no longer runs).
FFCV's internals are pinned the same way in tests/test_internals_data.py.
"""

import ast
import hashlib
import inspect
import re
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loops import fetchers
from lightning.pytorch.loops.fit_loop import _FitLoop
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from torch.utils.data import DataLoader, TensorDataset

from resnext_lit.training.console import UPSTREAM_NOISE
from resnext_lit.training.preemption import _cluster_environment

# (the internal, its source, who relies on it and how, the sha256 of its source, first 16 hex)
PINNED = [
    ("LightningCLI.__init__", LightningCLI.__init__,
     "ResNeXtCLI: parse_arguments, then _parse_ckpt_path, then before_instantiate_classes",
     "b37c41a154cee503"),
    ("LightningCLI._parse_ckpt_path", LightningCLI._parse_ckpt_path,
     "ResNeXtCLI._parse_ckpt_path overrides it; _trusted_torch_load patches its torch.load",
     "9c48f812abdba883"),
    ("WandbLogger.__init__", WandbLogger.__init__,
     "wandb_logger.WandbLogger fills _wandb_init, reads _log_model", "81efecccd45c5468"),
    ("WandbLogger.experiment", WandbLogger.experiment.fget,
     "wandb_logger.WandbLogger.experiment starts the run itself when _experiment is None and "
     "there is no _attach_id", "71638a721b9ec24b"),
    ("WandbLogger.__getstate__", WandbLogger.__getstate__,
     "a DDP child's logger attaches through _attach_id", "e816dfc6d2edff57"),
    ("_TrainingEpochLoop._broadcast_sigterm_tensor", _TrainingEpochLoop._broadcast_sigterm_tensor,
     "preemption.Preemption.setup swaps it for a no-op under DDP", "d4e504c3f7d8bcb5"),
    ("_TrainingEpochLoop.advance", _TrainingEpochLoop.advance,
     "calls _broadcast_sigterm_tensor once per training step", "c7555c016027bd73"),
    ("_FitLoop.setup_data", _FitLoop.setup_data,
     "sets _combined_loader and _data_fetcher, which resume.ExactResume re-iterates",
     "77855202334401d5"),
    ("_DataFetcher", fetchers._DataFetcher,
     "ExactResume: iter(fetcher), fetcher.iterator, fetcher.length", "6c0fe2b180a633f0"),
    ("_PrefetchDataFetcher", fetchers._PrefetchDataFetcher,
     "ExactResume: fetcher.batches (an unsized loader prefetches)", "f0d104209f783101"),
    ("_SignalConnector.register_signal_handlers", _SignalConnector.register_signal_handlers,
     "preemption._cluster_environment reads the environment as this does; Preemption "
     "installs its handlers first so this one leaves SIGUSR1 alone", "cd4b642fd86bfc6f"),
]


# Every `obj._name` (and getattr/hasattr with a "_name") in resnext_lit/ on something not our
# own `self`: each is pinned above (or, for FFCV, in tests/test_internals_data.py).
ALLOWED = {
    "lightning_cli.py: super()._parse_ckpt_path",
    "preemption.py: getattr(trainer, '_accelerator_connector')",
    "resume.py: loop._data_fetcher",
    "resume.py: loop._combined_loader",
    "preemption.py: trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor",
    "wandb_logger.py: hasattr(self, '_attach_id')",  # set by Lightning's __setstate__, not by us
    "record_writer.py: getattr(self, '_restored')",  # our own attribute, set only when resumed
    "gpu.py: os._exit", "processes.py: os._exit",  # documented: exit a forked child at once
}


def fingerprint(obj) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name, obj, relied_on_by, expected", PINNED,
                         ids=[row[0] for row in PINNED])
def test_private_internal_is_the_version_we_checked(name, obj, relied_on_by, expected):
    assert fingerprint(obj) == expected, (
        f"{name} changed since lightning 2.6.6: re-check {relied_on_by}, then update its row")


def test_the_trusted_load_patch_reaches_lightnings_checkpoint_read():
    """`_trusted_torch_load` replaces `torch.load` on the module: Lightning must read it there."""
    source = inspect.getsource(LightningCLI._parse_ckpt_path)
    assert "torch.load(ckpt_path, weights_only=True" in source


def test_cluster_environment_is_the_one_lightning_chose():
    env = SLURMEnvironment(auto_requeue=False)
    trainer = Trainer(accelerator="cpu", devices=1, plugins=[env], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False)
    assert _cluster_environment(trainer) is env


class _Tiny(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _SeeLoop(Callback):
    def on_train_start(self, trainer, pl_module):
        loop = trainer.fit_loop
        self.fetcher = loop._data_fetcher
        self.flattened = loop._combined_loader.flattened


def test_exact_resume_finds_the_fetcher_and_loaders_where_it_looks():
    """What `ExactResume.on_train_start` reads, at the hook it reads it in."""
    seen = _SeeLoop()
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[seen])
    trainer.fit(_Tiny(), loader)
    assert seen.flattened == [loader]
    iter(seen.fetcher)  # ExactResume makes the iterators again this way
    assert seen.fetcher.length == 2 and next(seen.fetcher.iterator) is not None


def test_lightnings_wandb_logger_keeps_the_state_we_read(tmp_path):
    logger = WandbLogger(project="p", save_dir=str(tmp_path), group="g", log_model=False)
    assert logger._experiment is None and logger._log_model is False
    assert logger._wandb_init["group"] == "g" and logger._wandb_init["project"] == "p"
    assert not hasattr(logger, "_attach_id")


def _private_reads(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__") and ast.unparse(node.value) != "self":
            yield f"{path.name}: {ast.unparse(node.value)}.{node.attr}"
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("getattr", "hasattr") \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                and str(node.args[1].value).startswith("_"):
            yield (f"{path.name}: {ast.unparse(node.func)}({ast.unparse(node.args[0])}, "
                   f"{node.args[1].value!r})")
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level \
                and any(p.startswith("_") for p in node.module.split(".") if p != "__future__"):
            yield f"{path.name}: from {node.module}"


def test_no_private_internal_is_used_without_a_pin():
    """A new `obj._name` of a library object fails here until it is pinned (and listed)."""
    root = Path(__file__).resolve().parents[1] / "resnext_lit"
    found = {read for path in sorted(root.rglob("*.py")) for read in _private_reads(path)}
    assert found <= ALLOWED, sorted(found - ALLOWED)
    assert found == ALLOWED, f"no longer used, drop from ALLOWED: {sorted(ALLOWED - found)}"


@pytest.mark.parametrize("kind, source, start, why", UPSTREAM_NOISE,
                         ids=[start[:40] for _, _, start, _ in UPSTREAM_NOISE])
def test_each_silenced_upstream_message_is_still_said_where_we_say(kind, source, start, why):
    """console.UPSTREAM_NOISE names each message's source: it must still be said there (else
    the filter is stale, or the message moved and now slips through under another name)."""
    text = (Path(torch.__file__).parents[1] / source).read_text()
    text = re.sub(r'"\s*\n\s*f?"', "", text)  # adjacent string literals, as Python joins them
    # A backticked name may be a placeholder there: `{hook_name}` for `on_after_batch_transfer`.
    pattern = re.sub(r"`(\w+)`", r"`(\1|\\{\\w+\\})`", re.escape(start))
    assert re.search(pattern, text), f"{start!r} not in {source}: re-check what {why!r} says"
