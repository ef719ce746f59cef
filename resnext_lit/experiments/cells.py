"""Which runs one table cell may average: those of one *effective recipe*. The paper's tables
(arXiv:1611.05431, Tables 3-5 and 7) compare networks under one training recipe, so a cell must
never mix a 2-epoch smoke run, another global batch or another resolution into its seeds.

    runs = [summarize(record) for record in records]          # results.json records
    cell = choose_cell("resnext50_32x4d", where, runs_of_that_network)
    cell.runs, describe(cell.setting)                         # the seeds averaged, in words
    [differences(setting_of(group[0]), cell.setting) for group in cell.apart]

A run belongs to the network it built, (depth, C, d) looked up with `registered_name`, whatever
`--model.arch` it started from (`resnext50_32x4d` with C=8, d=14 is Table 3's 8x14d). Its
effective recipe is everything that changes what is trained or how it is scored (`RECIPE`):
dataset, recipe, network, form, blurpool, stage, planned epochs and step limit, global and
per-device batch, train and val resolution and val crop ratio, precision, the weights it started
from (or, for `validate`, what it scored), and every optimisation, regularisation, augmentation
and evaluation setting (`TRAINING`, `DATA`: lr, schedule, weight decay, label smoothing,
MixUp/CutMix, zero-init residual, EMA, flip TTA, ...). Seeds are the only thing a cell averages
over (a cell holding two runs of one seed says so). A value a record lacks is None, and None
matches only None (a record older than its `dataset` key is on the data its network is
registered on, `models.dataset_of`; one that named its loader, "ffcv", is named again from its
config, `facts.data_name`). When one (dataset, recipe, network) holds several recipes,
the cell is the one trained at the recipe's own global batch (`global_batch_size`, as the
recipe states it), then the one with the most planned epochs (a smoke run is shorter than the
real recipe), then the most finished runs, then `fit` over `validate`, then the most runs; the
others are kept apart, each naming how it differs ("epochs 2 (cell: 100)").
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from ..facts import LOADERS, data_name
from ..models import dataset_of, model_entry, registered_name

NETWORK = ("dataset", "recipe", "network", "depth", "cardinality", "bottleneck_width")
# What else must agree for two runs to be seeds of one cell: the effective recipe. name -> label.
# The model's and the Trainer's settings that change what is trained or how it is scored:
# key -> (config section, config key, label). Speed knobs (compile, channels_last, workers)
# change no number a table shows and are left out.
TRAINING = {
    "lr": ("model", "lr", "lr"), "momentum": ("model", "momentum", "momentum"),
    "nesterov": ("model", "nesterov", "nesterov"),
    "weight_decay": ("model", "weight_decay", "weight decay"),
    "no_bn_weight_decay": ("model", "no_bn_weight_decay", "no BN weight decay"),
    "schedule": ("model", "schedule", "schedule"),
    "milestones": ("model", "milestones", "milestones"), "gamma": ("model", "gamma", "gamma"),
    "warmup_epochs": ("model", "warmup_epochs", "warmup epochs"),
    "peak_epoch": ("model", "peak_epoch", "peak epoch"),
    "label_smoothing": ("model", "label_smoothing", "label smoothing"),
    "mixup_alpha": ("model", "mixup_alpha", "MixUp alpha"),
    "cutmix_alpha": ("model", "cutmix_alpha", "CutMix alpha"),
    "zero_init_residual": ("model", "zero_init_residual", "zero-init residual"),
    "ema_decay": ("model", "ema_decay", "EMA decay"), "flip_tta": ("model", "flip_tta", "flip TTA"),
    "nonfinite_loss": ("model", "nonfinite_loss", "non-finite loss"),
    "gradient_clip_val": ("trainer", "gradient_clip_val", "gradient clip"),
}
# The DataModules' augmentation and split settings (the resolution and crop are RECIPE's own).
DATA = {"padding": "padding", "flip": "flip", "crop_scale": "crop scale",
        "val_fraction": "val fraction", "order": "order", "classes": "classes"}
RECIPE = {"form": "form", "blurpool": "blurpool", "stage": "stage", "epochs": "epochs",
          "max_steps": "max steps", "global_batch": "global batch",
          "per_device_batch": "per-device batch", "train_res": "train res",
          "train_res_final": "final train res", "val_res": "val res", "val_crop_ratio": "val crop",
          "precision": "precision", "weights": "weights",
          **{k: label for k, (_, _, label) in TRAINING.items()},
          **{f"data.{k}": label for k, label in DATA.items()}}


@dataclass
class Cell:
    """The runs one cell averages, their setting (NETWORK + RECIPE keys), the groups kept apart."""
    name: str
    runs: list[dict]
    setting: dict
    apart: list[list[dict]] = field(default_factory=list)


def summarize(record: dict, metric: str = "final") -> dict:
    """One record (results.json shape) -> the fields the tables need; tolerant of gaps."""
    model, config = record.get("model") or {}, record.get("config") or {}
    scale, resolution = record.get("scale") or {}, record.get("resolution") or {}
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    setting = tuple(model.get(k) for k in ("depth", "cardinality", "bottleneck_width"))
    network = registered_name(*setting) if None not in setting else None
    history, stage = record.get("epochs") or [], record.get("stage") or "fit"
    crop = resolution.get("val_crop_ratio")
    # A validate or test run evaluates once: its best is its final.
    once = stage in ("validate", "test")
    result = record.get(metric) or (record.get("final") if once else None) or {}
    entry = model_entry(network) if network else {}
    if record.get("evaluated") == "untrained":  # scored an untrained network: never a result
        stage = f"{stage} (untrained)"
    split = "test" if stage.startswith("test") else "val"  # a `test` record scored test/*
    return {"arch": record.get("arch") or (config.get("model") or {}).get("arch"),
            "network": network, "paper_setting": bool(entry.get("in_paper")),
            "status": record.get("status", "unknown"),
            "dataset": _dataset(record, config, network),
            "recipe": record.get("recipe"), "seed": record.get("seed"), "stage": stage,
            "depth": setting[0], "cardinality": setting[1], "bottleneck_width": setting[2],
            "form": model.get("form"), "blurpool": bool(model.get("blurpool")),
            # Planned epochs; a step-limited run (max_epochs -1) plans steps, not epochs.
            "epochs": (record.get("max_epochs") or trainer.get("max_epochs") or len(history))
            if record.get("max_epochs") != -1 else None,
            "max_steps": record.get("max_steps"), "global_batch": scale.get("global_batch"),
            "per_device_batch": scale.get("per_device_batch"),
            "recipe_batch": config.get("global_batch_size"),  # the recipe's stated batch
            "train_res": resolution.get("train"),
            "train_res_final": resolution.get("train_final"), "val_res": resolution.get("val"),
            # Rounded: 224/256 computed two ways must still be one recipe.
            "val_crop_ratio": None if crop is None else round(crop, 4),
            "precision": record.get("precision") or str(trainer.get("precision") or "") or None,
            "weights": _weights(record, config, stage),
            **{k: _hashable(_section(config, section).get(key))
               for k, (section, key, _) in TRAINING.items()},
            **{f"data.{k}": _hashable(_section(config, "data").get(k)) for k in DATA},
            "params": model.get("params"), "macs": model.get("macs"),
            "top1": result.get(f"{split}/top1_err"), "top5": result.get(f"{split}/top5_err"),
            "history": history, "images_per_s": record.get("images_per_s"),
            "paper": entry.get("paper", {})}


def _dataset(record: dict, config: dict, network: str | None) -> str | None:
    """The data a run trained on, as its record names it; a record that named its loader
    ("ffcv") is named again from its config, a record that predates the key by the data its
    network is registered on."""
    dataset, classes = record.get("dataset"), (record.get("model") or {}).get("num_classes")
    if dataset in LOADERS:
        data = config.get("data") if isinstance(config.get("data"), dict) else {}
        return data_name(data.get("class_path") or dataset, _section(config, "data"), classes)
    return dataset or (dataset_of(network, classes) if network else None)


def _section(config: dict, name: str) -> dict:
    """A config section as a dict; `data` is its init_args (the class is the dataset's)."""
    section = config.get(name) if isinstance(config.get(name), dict) else {}
    return section.get("init_args") or {} if name == "data" else section


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _weights(record: dict, config: dict, stage: str) -> str | None:
    """By file name: what a `fit` started from (None: from scratch), or what a `validate`
    scored ("checkpoint": any run's checkpoint, so seeds average; a weights file; "untrained")."""
    if stage.startswith(("validate", "test")) and record.get("checkpoint"):
        return "checkpoint"
    start = (record.get("evaluated") if stage.startswith(("validate", "test")) else None) or (
        config.get("model") or {}).get("weights")
    return None if start is None else str(start).rsplit("/", 1)[-1]


def choose_cell(name: str, where: dict, runs: list[dict]) -> Cell:
    """The cell of `runs`, all of one (dataset, recipe, network) (`where` holds those keys):
    its runs are those of the top-ranked effective recipe (module docstring), and each other
    recipe's runs are one group in `apart`. No runs: a gap whose recipe is all None."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in RECIPE), []).append(r)
    if not groups:
        return Cell(name, [], {**where, **dict.fromkeys(RECIPE)})
    # sorted() is stable, so equal ranks keep the records' order: a pure function of them.
    (key, cell), *apart = sorted(groups.items(), key=lambda kv: _rank(kv[1]), reverse=True)
    return Cell(name, cell, {**where, **dict(zip(RECIPE, key))}, [g for _, g in apart])


def _rank(group: list[dict]) -> tuple:
    first = group[0]
    own_batch = first["global_batch"] == first["recipe_batch"] is not None
    return (own_batch, first["epochs"] or 0, sum(r["status"] == "finished" for r in group),
            first["stage"] == "fit", len(group))


def picker(by: dict[tuple, list[dict]], recipe: str, placed: set[int]):
    """(pick, picked): `pick(network, dataset)` is that network's `Cell` under `recipe`, for a
    table builder; `picked` lists the cells it made. `by` maps (dataset, recipe, network) to
    summarized runs. A pick takes `fit` runs at any val resolution unless `stages` and `val_res`
    say otherwise (Table 5), and adds every run it considered to `placed`."""
    picked: list[Cell] = []

    def pick(network: str, dataset: str, stages=("fit",), val_res: int | None = None) -> Cell:
        found = [r for r in by.get((dataset, recipe, network), [])
                 if r["stage"] in stages and val_res in (None, r["val_res"])]
        placed.update(id(r) for r in found)
        entry = model_entry(network)
        where = {"dataset": dataset, "recipe": recipe, "network": network,
                 **{k: entry[k] for k in ("depth", "cardinality", "bottleneck_width")}}
        name = network + ("" if dataset == "imagenet" else f" on {dataset}") + (
            f" at {val_res} px" if val_res else "")
        picked.append(choose_cell(name, where, found))
        return picked[-1]
    return pick, picked


def _show(value, missing: str = "unrecorded") -> str:
    if value is None:
        return missing
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(s: dict) -> str:
    """A setting's recipe in words: 'form (c), 100 epochs, global batch 256, 224 px train /
    224 px val (crop 0.875)'."""
    train = _show(s["train_res"]) + ("" if s["train_res_final"] in (None, s["train_res"])
                                     else f"->{s['train_res_final']}")
    res = "resolution unrecorded" if {s["train_res"], s["val_res"]} == {None} else (
        f"{train} px train / {_show(s['val_res'])} px val" + (
            "" if s["val_crop_ratio"] is None else f" (crop {_show(s['val_crop_ratio'])})"))
    steps = f" (at most {s['max_steps']} steps)" if s.get("max_steps") else ""
    text = f"form ({_show(s['form'])}), {_show(s['epochs'])} epochs{steps}, " \
           f"global batch {_show(s['global_batch'])}, {res}"
    text += f", {s['precision']}" if s.get("precision") else ""
    text += ", blurpool" if s.get("blurpool") else ""
    text += f", weights {s['weights']}" if s.get("weights") else ""
    if s["stage"] not in ("fit", "validate"):
        text += f", {s['stage']}"  # e.g. "W&B piece": a W&B run that may be part of a run
    return text + (", evaluated by `validate`" if s["stage"] == "validate" else "")


def differences(s: dict, cell: dict, than: str = "cell") -> str:
    """How a setting differs from its cell's (or `than`'s): 'epochs 2 (cell: 100); ...'."""
    def show(k, value):  # a training setting's None is "off", not a gap in the record
        off = k in TRAINING or k.startswith("data.") or k in ("weights", "max_steps")
        return _show(value, "none" if off else "unrecorded")
    return "; ".join(f"{label} {show(k, s[k])} ({than}: {show(k, cell[k])})"
                     for k, label in RECIPE.items() if s[k] != cell[k])


def setting_of(r: dict) -> dict:
    """A summarized run's NETWORK and RECIPE keys: what its cell (or its own row) is."""
    return {k: r[k] for k in (*NETWORK, *RECIPE)}


def stat(runs: list[dict], key: str) -> tuple[float | None, float | None, int]:
    """(mean, std, n) of `key` over the finished runs; (None, None, 0) when there are none."""
    values = [r[key] for r in runs if r["status"] == "finished" and r[key] is not None]
    if not values:
        return None, None, 0
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None,
            len(values))


def known(runs: list[dict], key: str):
    """A property of the setting (params, MACs): any run has it, even a failed one."""
    return next((r[key] for r in runs if r[key] is not None), None)
