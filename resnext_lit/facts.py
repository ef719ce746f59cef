"""What every record of a run says about it, written once: results.json
(`resnext_lit.training.record_writer`), the W&B run config
(`resnext_lit.training.wandb_logger`) and benchmark records (`resnext_lit.bench`) take their
facts from here, so a table never sees two versions of one.

    from resnext_lit.facts import environment, network_facts
    hardware, versions = environment()
    network_facts(ResNeXt(**config), image_size=224)  # depth, C, d, form, ..., params, MACs

- `environment()`: hardware (platform, CPUs, GPU names) and library versions of this process.
- `code_version()`: the git commit of this code and whether the tree had changes, or
  "not a git checkout" (an installed package).
- `network_facts(net, size)`: the network's settings, its depth as the paper counts it
  (`resnext_lit.models.depth_of`), params and MACs at `size` (`resnext_lit.models.flops`);
  `counted_network(config, size)` the same for a network not built yet.
- `dataset_name(datamodule, classes)`: what a table calls the data ("imagenet", "cifar100", ...);
  `data_name` the same from a record's config, for records that named the loader ("ffcv").
- `resolution(datamodule, trainer)`: train (first and last epoch), val px and val crop ratio.
- `counted_at(datamodule)`: the resolution params and MACs are counted at: the val one, where
  the recorded errors are measured (the paper counts FLOPs at its 224 px test crop).
- `training_limits(trainer)`: planned epochs and step limit, and the precision that ran.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "lightning", "torchmetrics", "ffcv", "wandb", "numpy")


def environment() -> tuple[dict, dict]:
    """(hardware, versions) of this process, for the record."""
    import torch

    hardware = {"platform": platform.platform(), "cpus": os.cpu_count(),
                "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return hardware, versions


CHECKOUT = Path(__file__).resolve().parents[1]  # the repository root, when run from a clone


@functools.cache  # once per process: the record and the W&B config both ask
def code_version(root: Path = CHECKOUT) -> dict | str:
    """{"commit", "dirty"} of the git checkout holding this code (dirty: a tracked file
    differs from the commit), or "not a git checkout"."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return "not a git checkout"  # e.g. installed inside another project's repository
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        return "not a git checkout"


def network_facts(net, image_size: int) -> dict:
    """The settings of `net` (a `ResNeXt`, possibly on the meta device) but its per-stage block
    counts, its paper depth, and params and MACs of one 3 x size x size forward pass."""
    from .models import complexity

    return {**{k: v for k, v in net.config.items() if k != "layers"}, "depth": net.depth,
            **complexity(net, image_size), "image_size": image_size}


def counted_network(net_config: dict, image_size: int) -> dict:
    """`network_facts` of the network `net_config` builds, counted on meta tensors: no memory,
    no compute (the record, the W&B config and the console's network line)."""
    import torch

    from .models import ResNeXt

    with torch.device("meta"):
        meta = ResNeXt(**net_config)
    return network_facts(meta, image_size)


# DataModules that read files of any data: the name of the data, not of the loader, goes in a
# record. kind -> its init args naming the files, train first.
LOADERS = {"ffcv": ("train_path", "val_path"), "imagefolder": ("train_dir", "val_dir")}


def dataset_name(datamodule, num_classes: int) -> str | None:
    """What a table calls the data: "cifar10"/"cifar100", "imagenet" (1000 classes from betons or
    folders), else the DataModule's name ("digits"); a DataModule may say with `dataset`. See
    `data_name`."""
    if datamodule is None:
        return None
    if getattr(datamodule, "dataset", None):
        return datamodule.dataset
    return data_name(type(datamodule).__name__, dict(getattr(datamodule, "hparams", {})),
                     num_classes)


def data_name(class_name: str, init_args: dict, num_classes: int | None) -> str | None:
    """The data of a DataModule class (a name or class path) given its init args. A loader of
    files (`LOADERS`) is no dataset: 1000 classes are ImageNet, else the data is named by the
    file it read (train's, else val's: "train.beton"; a name, not a claim about its content),
    never by the loader ("ffcv")."""
    kind = class_name.rsplit(".", 1)[-1].lower().removesuffix("datamodule")
    if kind == "cifar":
        return f"cifar{num_classes}"
    if kind not in LOADERS:
        return kind
    if num_classes == 1000:
        return "imagenet"
    path = next((init_args[k] for k in LOADERS[kind] if init_args.get(k)), None)
    return Path(str(path)).name if path else None


def counted_at(datamodule) -> int:
    return (getattr(datamodule, "val_image_size", None) or getattr(datamodule, "image_size", None)
            or 224)


def training_limits(trainer) -> dict:
    """max_epochs (-1: step-limited), max_steps (None: none), and the precision that runs:
    Lightning's (a CPU asked for "16-mixed" runs "bf16-mixed"), not the config's."""
    return {"max_epochs": trainer.max_epochs,
            "max_steps": None if trainer.max_steps == -1 else trainer.max_steps,
            "precision": str(trainer.precision)}


def resolution(datamodule, trainer) -> dict:
    """Train (first and last epoch: progressive resizing grows it) and val px, val crop ratio."""
    train = getattr(datamodule, "image_size", None)
    schedule, epochs = getattr(datamodule, "res_schedule", None), trainer.max_epochs
    if hasattr(datamodule, "res_schedule") and schedule is None:  # FFCV, before fit's setup
        from .data.ffcv import ProgressiveResizing

        schedule = next((c.schedule(epochs) for c in trainer.callbacks
                         if isinstance(c, ProgressiveResizing)), None)
    first, last = (schedule(0), schedule(epochs - 1)) if schedule and epochs else (train, train)
    return {"train": first, "train_final": last,
            "val": getattr(datamodule, "val_image_size", train),
            "val_crop_ratio": getattr(datamodule, "val_crop_ratio", None)}
