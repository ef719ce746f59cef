"""`python -m resnext_lit models`: the zoo as a table, measured, beside the paper's figures.

Every network is built on the meta device, so the whole zoo is counted in seconds.
"""

from __future__ import annotations

import argparse

import torch

from .complexity import complexity
from .registry import create_model, list_models, model_config, model_entry

NATIVE_SIZE = {"imagenet": 224, "cifar": 32}  # the resolution each stem's paper figures use


def zoo_rows(names: list[str] | None = None) -> list[dict]:
    """One dict per model: name, depth, C, d, params, MACs at its native size, paper error."""
    rows = []
    for name in names or list_models():
        entry, config = model_entry(name), model_config(name)
        with torch.device("meta"):
            cost = complexity(create_model(name), NATIVE_SIZE[config["stem"]])
        paper = entry["paper"]
        rows.append(dict(name=name, depth=entry["depth"], C=entry["cardinality"],
                         d=entry["bottleneck_width"], size=NATIVE_SIZE[config["stem"]],
                         params_m=cost["params"] / 1e6, gmacs=cost["macs"] / 1e9,
                         paper_err=paper.get("top1_err", paper.get("cifar10_err")),
                         dataset="CIFAR-10" if config["stem"] == "cifar" else "IN-1k"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_lit models",
                                     description="List the model zoo with measured complexity.")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    header = ("model", "depth", "C", "d", "params M", "GMACs", "px", "paper err %", "data")
    rows = [(r["name"], str(r["depth"]), str(r["C"]), str(r["d"]), f"{r['params_m']:.2f}",
             f"{r['gmacs']:.2f}", str(r["size"]),
             "" if r["paper_err"] is None else f"{r['paper_err']:.2f}", r["dataset"])
            for r in zoo_rows()]
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        print("\n".join("| " + " | ".join(row) + " |" for row in rows))
        return 0
    from rich.console import Console
    from rich.table import Table
    table = Table(title="resnext_lit model zoo (MACs = the paper's FLOPs; top-1 error)")
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i in (0, 8) else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return 0
