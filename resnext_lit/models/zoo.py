"""`python -m resnext_lit models`: the zoo as a table, measured, beside the paper's figures.

    python -m resnext_lit models              # a Rich table
    python -m resnext_lit models --markdown   # the same rows as Markdown

Every network is built on the meta device, so the whole zoo is counted in seconds. Data, native
resolution, aliases and where the paper has each network all come from the registry.
"""

from __future__ import annotations

import argparse

from .registry import list_models, model_entry

HEADER = ("model", "depth", "C", "d", "params M", "GMACs", "px", "paper err %", "data",
          "in paper", "alias")


def zoo_rows(names: list[str] | None = None) -> list[dict]:
    """One dict per model: name, depth, C, d, params, MACs at its native size, paper error
    (ImageNet top-1, or CIFAR-10 test error), data, where the paper has it, aliases."""
    import torch  # here, not at the top: `models --help` answers without it

    from .flops import complexity
    from .registry import create_model

    rows = []
    for name in names or list_models():
        entry = model_entry(name)
        with torch.device("meta"):
            cost = complexity(create_model(name), entry["image_size"])
        paper = entry["paper"]
        rows.append(dict(name=name, depth=entry["depth"], C=entry["cardinality"],
                         d=entry["bottleneck_width"], size=entry["image_size"],
                         params_m=cost["params"] / 1e6, gmacs=cost["macs"] / 1e9,
                         paper_err=paper.get("top1_err", paper.get("cifar10_err")),
                         dataset=entry["dataset"], tables=entry["tables"],
                         aliases=entry["aliases"]))
    return rows


def in_paper(tables: tuple[str, ...]) -> str:
    """Where the paper has a network, compactly: ("Table 3", "Table 4") -> "Table 3, 4"."""
    numbers = [t.removeprefix("Table ") for t in tables if t.startswith("Table ")]
    parts = ["Table " + ", ".join(numbers)] if numbers else []
    return "; ".join(parts + [t for t in tables if not t.startswith("Table ")]) or "no"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_lit models",
                                     description="List the model zoo with measured complexity.")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    rows = [(r["name"], str(r["depth"]), str(r["C"]), str(r["d"]), f"{r['params_m']:.2f}",
             f"{r['gmacs']:.2f}", str(r["size"]),
             "" if r["paper_err"] is None else f"{r['paper_err']:.2f}", r["dataset"],
             in_paper(r["tables"]), ", ".join(r["aliases"]))
            for r in zoo_rows()]
    if args.markdown:
        print("| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER))
        print("\n".join("| " + " | ".join(row) + " |" for row in rows))
        return 0
    from rich.console import Console
    from rich.table import Table

    # Fits 80 columns: headers on two lines, no rules, the aliases listed below.
    table = Table(title="resnext_lit model zoo", box=None, padding=(0, 1, 0, 0),
                  pad_edge=False, caption="MACs are the paper's FLOPs; paper err: ImageNet "
                  "top-1, or CIFAR-10 test error for cifar", caption_justify="left")
    for i, col in enumerate(HEADER[:-1]):
        table.add_column(col.replace(" ", "\n", 1), justify="right" if 1 <= i <= 7 else "left",
                         no_wrap=True)
    for row in rows:
        table.add_row(*row[:-1])
    console = Console()
    console.print(table)
    aliases = [f"{alias} = {row[0]}" for row in rows for alias in row[-1].split(", ") if alias]
    console.print("aliases: " + ", ".join(aliases), highlight=False)
    return 0
