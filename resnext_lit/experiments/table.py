"""The paper's tables, with our numbers next to its: `python -m resnext_lit table`.

    python -m resnext_lit table --runs runs --out tables                     # every results.json
    python -m resnext_lit table --runs runs/sweeps/demo-cardinality --out tables/demo
    python -m resnext_lit table --sweep my-team/resnext-lit/abc123 --out tables   # W&B public API

Reads the `results.json` records the training writes (or W&B runs, converted to the same shape)
and lays them out as arXiv:1611.05431 prints them: Table 3 (depth x C x d), Table 4 (top-1/top-5
at 2x complexity), Table 5 (single-crop test at 224 and 320 px), Table 7 (CIFAR-10/100 with
params), Fig. 7 (CIFAR-10 error vs params), and a table of every other setting (e.g. the digits
demo). Each cell is ours (mean +- std over seeds), the paper's figure from the model registry,
and the difference. A setting with no finished run is a gap ("-", with the state of its runs),
never a zero. Writes tables.md, tables.csv (one row per cell) and PNGs: train/val error per epoch
(Fig. 5 style) and error vs params (Fig. 7 style; `figures.py`), each written atomically. Then
the paper's claims, each judged on these cells with its 95% interval over seeds (`claims.py`):
a "Claims" section in tables.md and on the console, claims.csv and claims.png.
`build_tables` is a pure function of records (`records.py` reads them).

How cells are formed (`cells.py`): a run counts for the network it built, looked up by (depth, C,
d), not by its `--model.arch` name, and a cell averages only runs of one effective recipe: every
setting that changes what is trained or how it is scored (`cells.RECIPE`: network, form, epochs,
batch, resolution, precision, weights, lr and schedule, regularisation, augmentation, EMA, TTA,
...); seeds are all it averages over. When a network's runs hold several recipes, the cell takes
the one with the most planned epochs, then the most finished runs; the others are listed in "Runs
apart from the paper cells", each naming how it differs ("epochs 2 (cell: 100)"), never averaged
in. A note under each table states its cells' recipe. `validate` records (a checkpoint evaluated
again) count only in Table 5, which takes each evaluation at 224 px and at 320 px; a `fit` run's
final error is an evaluation at its own val resolution.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write
from ..models import dataset_of, model_entry
from ..models.registry import FIG7, TABLE3, TABLE3_SETTINGS, TABLE4, TABLE5, TABLE5_SIZES, TABLE7
from . import claims
from .cells import (
    NETWORK,
    RECIPE,
    Cell,
    describe,
    differences,
    known,
    picker,
    setting_of,
    stat,
    summarize,
)
from .figures import plot_claims, plot_curves, plot_error_vs_params
from .records import load_local, load_wandb

GAP = "-"
APART = "Runs apart from the paper cells"
CLAIM_COLUMNS = ["claim", "source", "text", "table", "verdict", "step", "ours", "low", "high",
                 "paper", "n_higher", "n_lower", "step_verdict", "seeds_needed", "why"]


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)    # long form, for the CSV
    runs: dict[str, list[dict]] = field(default_factory=dict)  # label -> runs, for the plots
    notes: list[str] = field(default_factory=list)


def cell_text(mean, std=None, n=1, runs=()) -> str:
    """A cell as the tables print it: "22.41 ± 0.12 (n=3)", or a gap naming its runs' states."""
    if mean is None:
        states = sorted({r["status"] for r in runs})
        return f"{GAP} ({', '.join(states)})" if states else GAP
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
    # Seeds are what a cell averages: runs that share one are repeats, and the cell says so.
    seeds = Counter(r["seed"] for r in runs if r["status"] == "finished")
    repeats = "".join(f", {k} runs of seed {seed}" for seed, k in seeds.items() if k > 1)
    return text + (f" (n={n}{repeats})" if n > 1 else "")


def diff(mean, paper) -> str:
    return GAP if mean is None or paper is None else f"{mean - paper:+.2f}"


def _cell(table: Table, row: str, column: str, cell: Cell, key: str,
          paper: float | None) -> tuple[str, str, str]:
    mean, std, n = stat(cell.runs, key)
    table.cells.append({"table": table.title, "row": row, "column": column, "ours_mean": mean,
                        "ours_std": std, "n": n, "paper": paper,
                        "diff": None if mean is None or paper is None else mean - paper,
                        "states": " ".join(sorted(r["status"] for r in cell.runs)),
                        **cell.setting})
    return (cell_text(mean, std, n, cell.runs), GAP if paper is None else f"{paper:.2f}",
            diff(mean, paper))


def build_tables(records: list[dict], metric: str = "final") -> list[Table]:
    """Run records -> the paper's tables (only those some record belongs to), the runs kept
    apart from their cells, and every other run."""
    runs = [summarize(r, metric) for r in records]
    by: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["network"]:
            by.setdefault((r["dataset"], r["recipe"], r["network"]), []).append(r)
    placed: set[int] = set()
    apart: dict[tuple, dict] = {}  # (group, its cell) -> the tables it is apart from
    tables = []
    recipes = sorted({r["recipe"] for r in runs if r["network"]}, key=str)
    for build in (_table3, _table4, _table5, _table7, _fig7):  # the paper's order, then recipe
        for recipe in recipes:
            pick, picked = picker(by, recipe, placed)
            t = build(pick, recipe)
            if t.runs:
                tables.append(t)
                t.notes += _recipe_notes(picked)
                for cell in picked:
                    for group in cell.apart:
                        key = (tuple(id(r) for r in group), tuple(id(r) for r in cell.runs))
                        apart.setdefault(key, {"group": group, "cell": cell, "tables": []})
                        apart[key]["tables"].append(t.title.split(":")[0])
    if apart:
        tables.append(_apart(apart.values()))
    others = [r for r in runs if id(r) not in placed]
    if others:
        tables.append(_other(others))
    return tables


def _recipe_notes(cells: list[Cell]) -> list[str]:
    """The note under a paper table: the recipe its cells average, and what is kept apart."""
    used: dict[str, dict[str, None]] = {}
    for cell in cells:
        if cell.runs:
            used.setdefault(describe(cell.setting), {})[cell.name] = None
    notes = [f"cells: {next(iter(used))}" if len(used) == 1 else "cells (one recipe each): " +
             "; ".join(f"{d} for {', '.join(names)}" for d, names in used.items())]
    kept = {tuple(id(r) for r in g) for cell in cells for g in cell.apart}
    if kept:
        notes.append(f"{len(kept)} group(s) of these networks' runs with another recipe are "
                     f"listed in \"{APART}\", never averaged in.")
    return notes


def _table3(pick, recipe) -> Table:
    header = ["", *(f"{c}x{d}d" for c, d in TABLE3_SETTINGS)]
    t = Table(f"Table 3: top-1 error (%) at ~constant complexity, ImageNet [{recipe}]", header)
    for depth, archs in TABLE3.items():
        cells = []
        for (c, d), arch in zip(TABLE3_SETTINGS, archs):
            cell = pick(arch, dataset_of(arch))
            if cell.runs:
                t.runs[f"{depth} layers {c}x{d}d"] = cell.runs
            cells.append(_cell(t, f"{depth} layers", f"{c}x{d}d", cell, "top1",
                               model_entry(arch)["paper"].get("top1_err")))
        for i, what in enumerate(("ours", "paper", "difference")):
            t.rows.append([f"{depth} layers, {what}", *(cell[i] for cell in cells)])
    return t


def _table4(pick, recipe) -> Table:
    header = ["model", "setting", "top-1 ours", "top-1 paper", "diff",
              "top-5 ours", "top-5 paper", "diff"]
    t = Table(f"Table 4: 2x complexity (~15 GFLOPs), ImageNet [{recipe}]", header)
    for name, setting, arch in TABLE4:
        cell = pick(arch, dataset_of(arch))
        if cell.runs:
            t.runs[f"{name} {setting}"] = cell.runs
        paper = model_entry(arch)["paper"]
        t.rows.append([name, setting,
                       *_cell(t, arch, "top-1", cell, "top1", paper.get("top1_err")),
                       *_cell(t, arch, "top-5", cell, "top5", paper.get("top5_err"))])
    return t


def _table5(pick, recipe) -> Table:
    """Table 5: single-crop test at 224 and 320 px; the paper's figures at the network's native
    size (224) are Table 4's, its 320 ones the registry's `*_320` keys. Any evaluation at that
    val size counts: a `fit`'s final error or a `validate` record of a checkpoint."""
    header = ["model", "setting"]
    for size in TABLE5_SIZES:
        header += [f"top-1 {size} ours", "paper", "diff", f"top-5 {size} ours", "paper", "diff"]
    t = Table(f"Table 5: single-crop test at 224 and 320 px, ImageNet [{recipe}]", header)
    for name, setting, arch in TABLE5:
        entry, row = model_entry(arch), [name, setting]
        paper = entry["paper"]
        for size in TABLE5_SIZES:
            cell = pick(arch, dataset_of(arch), stages=("fit", "validate"), val_res=size)
            if cell.runs:
                t.runs[f"{name} {setting} at {size} px"] = cell.runs
            suffix = "" if size == entry["image_size"] else f"_{size}"
            row += [*_cell(t, arch, f"top-1 {size}", cell, "top1", paper.get(f"top1_err{suffix}")),
                    *_cell(t, arch, f"top-5 {size}", cell, "top5", paper.get(f"top5_err{suffix}"))]
        t.rows.append(row)
    return t


def _table7(pick, recipe) -> Table:
    header = ["model", "params (M)", "params paper", "CIFAR-10 ours", "paper", "diff",
              "CIFAR-100 ours", "paper", "diff"]
    t = Table(f"Table 7: test error (%) on CIFAR, mean of runs [{recipe}]", header)
    for arch in TABLE7:
        paper, row = model_entry(arch)["paper"], [arch]
        c10, c100 = pick(arch, dataset_of(arch, 10)), pick(arch, dataset_of(arch, 100))
        mean_params = known(c10.runs + c100.runs, "params")
        row += [GAP if mean_params is None else f"{mean_params / 1e6:.1f}",
                f"{paper['params_m']:.1f}"]
        for dataset, cell in (("cifar10", c10), ("cifar100", c100)):
            if cell.runs:
                t.runs[f"{arch} {dataset}"] = cell.runs
            row += _cell(t, arch, dataset, cell, "top1", paper.get(f"{dataset}_err"))
        t.rows.append(row)
    return t


def _fig7(pick, recipe) -> Table:
    header = ["series", "model", "params (M)", "CIFAR-10 error (%)"]
    t = Table(f"Fig. 7: cardinality vs width at equal size, CIFAR-10 [{recipe}]", header)
    for series, archs in FIG7.items():
        for arch in archs:
            cell = pick(arch, dataset_of(arch, 10))
            if cell.runs:
                t.runs[f"{series}: {arch}"] = cell.runs
            params = known(cell.runs, "params")
            t.rows.append([series, arch, GAP if params is None else f"{params / 1e6:.1f}",
                           _cell(t, arch, "cifar10", cell, "top1", None)[0]])
    return t


def _apart(groups) -> Table:
    """One row per group of runs kept out of a paper cell, naming how its recipe differs."""
    header = ["table", "model", "data", "recipe", "differs from the cell in", "top-1 err (%)",
              "top-5 err (%)", "epochs run"]
    t = Table(f"{APART} (another effective recipe: never averaged in)", header)
    for a in groups:
        cell, where = a["cell"], a["cell"].setting
        group = Cell(cell.name, a["group"], setting_of(a["group"][0]))
        how = differences(group.setting, where)
        label = f"{cell.name}: {how}"
        t.runs[label] = group.runs
        t.rows.append([", ".join(dict.fromkeys(a["tables"])), where["network"],
                       str(where["dataset"]), str(where["recipe"]), how,
                       _cell(t, label, "top-1", group, "top1", None)[0],
                       _cell(t, label, "top-5", group, "top5", None)[0], _epochs_run(group.runs)])
    return t


def _epochs_run(runs: list[dict]) -> str:
    """The epochs the finished runs trained ("2/100"); a `validate` record trained none."""
    return "/".join(map(str, sorted({len(r["history"]) for r in runs
                                     if r["status"] == "finished" and r["stage"] == "fit"}))) or GAP


def _other(runs: list[dict]) -> Table:
    header = ["model", "depth", "C x d", "form", "data", "recipe", "params (M)", "GMACs",
              "top-1 err (%)", "top-5 err (%)", "epochs", "img/s", "run as"]
    t = Table("Other settings (not a paper setting, or data the paper does not use)", header)
    groups: dict[tuple, list[dict]] = {}
    for r in runs:  # one row per network and effective recipe: never average a smoke run in
        key = (r["network"] or r["arch"], *setting_of(r).values())
        groups.setdefault(tuple(map(str, key)), []).append(r)
    # Per network, the group with the most runs first: the rows after it name how they differ.
    for _, found in sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]), kv[0])):
        s, name = setting_of(found[0]), found[0]["network"] or found[0]["arch"]
        c, d, depth = s["cardinality"], s["bottleneck_width"], s["depth"]
        setting = GAP if c is None else f"{c}x{d}d"
        # "<data>: ..." names the series of the error-vs-params plot: one line per dataset.
        label = f"{s['dataset']}: {name} {setting}" + (f" depth {depth}" if depth else "")
        if label in t.runs:  # the same network with another recipe: name the difference
            first = setting_of(t.runs[label][0])
            label += f" ({differences(s, first, 'first row') or describe(s)})"
        t.runs[label] = found
        params, macs = known(found, "params"), known(found, "macs")
        speed = stat(found, "images_per_s")[0]
        cell = Cell(label, found, s)
        t.rows.append([str(name), str(depth or GAP), setting, str(s["form"] or GAP),
                       str(s["dataset"] or GAP), str(s["recipe"] or GAP),
                       GAP if params is None else f"{params / 1e6:.2f}",
                       GAP if macs is None else f"{macs / 1e9:.3f}",
                       _cell(t, label, "top-1", cell, "top1", None)[0],
                       _cell(t, label, "top-5", cell, "top5", None)[0],
                       _epochs_run(found), GAP if speed is None else f"{speed:.0f}",
                       describe(s) if depth else GAP])  # a record with no network: no recipe
    return t


def markdown(tables: list[Table]) -> str:
    out = []
    for t in tables:
        out += [f"### {t.title}", "", "| " + " | ".join(t.header) + " |",
                "|" + "---|" * len(t.header)]
        out += ["| " + " | ".join(row) + " |" for row in t.rows]
        out += [""]
        for note in t.notes:  # a paragraph each: Markdown would run adjacent lines together
            out += [note, ""]
    return "\n".join(out)


def write_csv(tables: list[Table], path: Path) -> None:
    columns = ["table", "row", "column", "ours_mean", "ours_std", "n", "paper", "diff", "states",
               *NETWORK, *RECIPE]
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for t in tables:
            writer.writerows(t.cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_lit table",
                                     description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", help="folder searched for results.json files")
    source.add_argument("--sweep", help="ENTITY/PROJECT/SWEEP_ID, read with the W&B API")
    parser.add_argument("--out", required=True, help="folder for tables.md, tables.csv, PNGs")
    parser.add_argument("--metric", choices=("final", "best"), default="final",
                        help="error at the last epoch (the paper's) or the best epoch")
    args = parser.parse_args(argv)
    records = load_local(args.runs) if args.runs else load_wandb(args.sweep)
    tables = build_tables(records, args.metric)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(tables, 1):
        name = re.split(r"[:(]", t.title.lower())[0]  # "table 3", "fig. 7", "other settings"
        slug = f"{i:02d}_" + re.sub(r"[^a-z0-9]+", "_", name).strip("_")
        if plot_curves(t, out / f"{slug}_curves.png"):
            t.notes.append(f"![curves]({slug}_curves.png)")
        fig7 = t.title.startswith("Fig. 7")
        if (fig7 or t.title.startswith("Other")) and \
                plot_error_vs_params(t, out / f"{slug}_error_vs_params.png", series=fig7):
            t.notes.append(f"![error vs params]({slug}_error_vs_params.png)")
    verdicts = claims.judge(tables)
    text = markdown(tables) + "\n" + claims.markdown(verdicts)
    if plot_claims(verdicts, out / "claims.png"):
        text += "\n![claims](claims.png)\n"
    with atomic_write(out / "tables.md") as f:
        f.write(text + "\n")
    write_csv(tables, out / "tables.csv")
    with atomic_write(out / "claims.csv", newline="") as f:
        writer = csv.DictWriter(f, CLAIM_COLUMNS)
        writer.writeheader()
        writer.writerows(claims.rows(verdicts))
    print(text)
    print(f"wrote {out}/tables.md, tables.csv, claims.csv and "
          f"{len(list(out.glob('*.png')))} PNG(s)")
    return 0
