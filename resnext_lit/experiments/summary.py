"""`python -m resnext_lit summary [RUNS_DIR]`: what the newest run under a folder did.

    python -m resnext_lit summary runs/demo

Reads the `results.json` that every `fit` writes: model, params, MACs, val error per epoch,
img/s, the share of each epoch spent waiting for data (with one "input-bound: ..." line for the
worst epoch above `INPUT_BOUND_FRAC`), and where the run, its checkpoints and the record are.
The network line is the registry's: the registered name of the network the run built, and the
paper's figure for it on the run's data, or why there is none (not in the paper, other data).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..models import dataset_of, model_entry, registered_name

# Above this share of an epoch waiting for the next batch (`train/data_wait_frac`, from
# `resnext_lit.training.data_wait.DataWait`), a faster loader is worth a look: it could buy up to
# 1 / (1 - 0.2) = 1.25x. Below it, costs that share the gap and that no loader change removes (the
# progress bar's redraw, step logging, the host->device copy, workers starting each epoch) can
# account for the share.
INPUT_BOUND_FRAC = 0.2


def newest_results(root: Path, stage: str = "fit") -> Path:
    """The newest results.json under `root` of a run of `stage` ("fit": training; "validate";
    "any"). A record without a stage is a fit's (written before the key)."""
    found = sorted(root.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no results.json under {root}")
    if stage != "any":
        found = [p for p in found if _stage(p) == stage]
    if not found:
        raise UserError(f"no results.json of a {stage} run under {root} (--stage any: every run)")
    return found[-1]


def _stage(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("stage", "fit")
    except (OSError, ValueError):
        return None


def input_bound(epochs: list[dict], threshold: float = INPUT_BOUND_FRAC) -> str | None:
    """One line naming the epoch that waited longest for data, if any waited above threshold."""
    above = [e for e in epochs if e.get("train/data_wait_frac", 0.0) > threshold]
    if not above:
        return None
    worst = max(above, key=lambda e: e["train/data_wait_frac"])
    line = (f"input-bound: the loader held back {worst['train/data_wait_frac']:.0%} of epoch "
            f"{worst['epoch']}")
    if len(above) > 1:
        line += f" ({len(above)} of {len(epochs)} epochs above {threshold:.0%})"
    return line


def network_line(record: dict) -> str:
    """The network the run built, as the registry knows it, and the paper's figure to compare."""
    model = record["model"]
    name = registered_name(model["depth"], model["cardinality"], model["bottleneck_width"])
    if name is None:
        return "network: not a registered one (see `python -m resnext_lit models`)"
    entry = model_entry(name)
    data = record.get("dataset") or dataset_of(name, model.get("num_classes"))
    if not entry["in_paper"]:
        return f"network: {name}, not in the paper (registered on {entry['dataset']})"
    key = "top1_err" if data == "imagenet" else f"{data}_err"
    if dataset_of(name, model.get("num_classes")) != data or key not in entry["paper"]:
        return f"network: {name} ({', '.join(entry['tables'])}); no paper figure for it on {data}"
    return (f"network: {name} ({', '.join(entry['tables'])}); paper: {entry['paper'][key]:.2f}% "
            f"top-1 error on {data} at {entry['image_size']} px")


def number(value: float | None, spec: str = ".2f") -> str:
    """A figure of the record as the summary prints it; blank where the record has none."""
    return "" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_lit summary")
    parser.add_argument("runs", nargs="?", default="runs", type=Path,
                        help="a run folder or a folder of runs (the newest is shown)")
    parser.add_argument("--stage", choices=("fit", "validate", "any"), default="fit",
                        help="which runs count: training runs (default), validate runs, any")
    args = parser.parse_args(argv)
    path = newest_results(args.runs, args.stage)
    record = json.loads(path.read_text())
    model, console = record["model"], Console()
    console.print(f"[bold]{record['arch']}[/] (depth {model['depth']}, "
                  f"{model['cardinality']}x{model['bottleneck_width']}d, form {model['form']}): "
                  f"{model['params'] / 1e6:.2f} M params, {model['macs'] / 1e6:.1f} M MACs "
                  f"at {model['image_size']} px  -  status: {record['status']}")
    console.print(network_line(record), markup=False, highlight=False)
    table = Table("epoch", "train loss", "train top-1 err %", "val top-1 err %",
                  "val top-5 err %", "img/s", "data wait %", "time s")
    for e in record["epochs"]:
        wait = e.get("train/data_wait_frac")
        table.add_row(str(e["epoch"]), number(e.get("train/loss"), ".3f"),
                      number(e.get("train/top1_err")), number(e.get("val/top1_err")),
                      number(e.get("val/top5_err")), number(e.get("train/images_per_s"), ".0f"),
                      number(None if wait is None else 100 * wait, ".0f"),
                      number(e.get("time_s"), ".0f"))
    console.print(table)
    if (line := input_bound(record["epochs"])) is not None:
        console.print(line, markup=False, highlight=False)
    best, final = record.get("best") or {}, record.get("final") or {}
    speed = record.get("images_per_s")
    parts = [f"best val top-1 error {number(best['val/top1_err'])}% (epoch {best['epoch']})"
             if best.get("val/top1_err") is not None else "not validated yet"]
    if final.get("epoch") is not None:  # the last validated epoch, which need not be the last
        parts.append(f"final {number(final['val/top1_err'])}% (epoch {final['epoch']})")
    if speed is not None:
        parts.append(f"{speed:.0f} img/s")
    console.print(", ".join([*parts, f"wall time {record['wall_time_s']:.0f} s"]))
    console.print(f"run: {path.parent}\ncheckpoints: {path.parent / 'checkpoints'}\n"
                  f"record: {path}")
    return 0
