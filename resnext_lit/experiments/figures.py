"""The paper's figures for `python -m resnext_lit table`: Fig. 5 style training curves and
Fig. 7 style error vs parameters, one PNG per table (a `resnext_lit.experiments.table.Table`: its
`runs` by label and its title), written atomically.

    plot_curves(table, Path("tables/03_table_3_curves.png"))         # False: nothing to draw
    plot_error_vs_params(table, Path("tables/05_fig_7_error_vs_params.png"))
"""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path

from ..atomic import atomic_write
from .cells import known, stat


def mean_curve(runs: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Per-epoch mean of `key` over runs (any state: a partial curve is still a curve)."""
    per_epoch: dict[int, list[float]] = {}
    for r in runs:
        for e in r["history"]:
            if e.get(key) is not None:
                per_epoch.setdefault(e["epoch"], []).append(e[key])
    epochs = sorted(per_epoch)
    return epochs, [statistics.fmean(per_epoch[e]) for e in epochs]


def plot_curves(table, path: Path) -> bool:
    """Fig. 5 style: train (dashed) and val (solid) top-1 error per epoch, one colour each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for i, (label, runs) in enumerate(table.runs.items()):
        color = f"C{i % 10}"
        states = {r["status"] for r in runs}
        if "finished" not in states:  # a partial curve is still a curve, but say so
            label += f" ({', '.join(sorted(states))})"
        for key, style in (("train/top1_err", "--"), ("val/top1_err", "-")):
            x, y = mean_curve(runs, key)
            if x:
                ax.plot(x, y, style, color=color, label=label if style == "-" else None)
                drawn = True
    if drawn:
        ax.set(xlabel="epoch", ylabel="top-1 error (%)")
        ax.set_title(textwrap.fill(table.title, 70), fontsize=9)
        ax.legend(fontsize=7, title="solid: val, dashed: train", title_fontsize=7)
        fig.tight_layout()
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return drawn


def plot_error_vs_params(table, path: Path) -> bool:
    """Fig. 7 style: final error vs parameters, one line per series (or per setting)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float, str]]] = {}
    for label, runs in table.runs.items():
        params, err = known(runs, "params"), stat(runs, "top1")[0]
        if params is not None and err is not None:
            name, _, point = label.rpartition(": ")
            series.setdefault(name or "runs", []).append((params / 1e6, err, point or label))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=name)
        for x, y, text in points:
            ax.annotate(text, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="parameters (M)", ylabel="top-1 error (%)")
    ax.set_title(textwrap.fill(table.title, 60), fontsize=9)
    ax.margins(x=0.25)  # room for the point labels
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return True
