"""The paper's figures for `python -m resnext_lit table`: Fig. 5 style training curves and
Fig. 7 style error vs parameters, one PNG per table (a `resnext_lit.experiments.table.Table`: its
`runs` by label and its title), written atomically at a slide's shape (16:9).

    plot_curves(table, Path("tables/03_table_3_curves.png"))         # False: nothing to draw
    plot_error_vs_params(table, Path("tables/02_fig_7_error_vs_params.png"), series=True)

Legends sit in a column right of the axes, so no group hides a curve; a long title or legend
entry wraps, and the figure grows until its legend fits. Fig. 7's points are named directly
("8x64d"), each label moved (with a leader line) until it meets no other label, point or line
and stays inside the axes. `curves_figure` and `error_vs_params_figure` return the figure
unsaved, for tests that measure where its text lies.
"""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path

from ..atomic import atomic_write
from .cells import known, stat

SIZE = (10, 5.625)   # inches: 16:9, a slide's shape
DPI = 120
FONT = 11            # points: axis labels and ticks, readable on a projected slide
SMALL = 9            # legend entries and point labels
ENTRY = 42           # characters per legend line before it wraps
MARKERS = "osD^vP*X"


def mean_curve(runs: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Per-epoch mean of `key` over runs (any state: a partial curve is still a curve)."""
    per_epoch: dict[int, list[float]] = {}
    for r in runs:
        for e in r["history"]:
            if e.get(key) is not None:
                per_epoch.setdefault(e["epoch"], []).append(e[key])
    epochs = sorted(per_epoch)
    return epochs, [statistics.fmean(per_epoch[e]) for e in epochs]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _figure():
    fig, ax = _pyplot().subplots(figsize=SIZE, dpi=DPI, layout="constrained")
    ax.tick_params(labelsize=FONT)
    ax.grid(alpha=0.3)
    return fig, ax


def _wrap(text: str, width: int = ENTRY) -> str:
    return textwrap.fill(text, width, break_on_hyphens=False)


def _finish(fig, ax, title: str, handles: list, labels: list[str], legend_title: str) -> None:
    """Legend in a column right of the axes, title over the axes; then fix the layout, taller
    where the legend needs it, so that later placement (point labels) measures the final
    positions."""
    renderer = fig.canvas.get_renderer()
    legend = fig.legend(handles, [_wrap(s) for s in labels], loc="outside right upper",
                        fontsize=SMALL, title=legend_title, title_fontsize=SMALL,
                        alignment="left", frameon=False)
    fig.canvas.draw()
    short = legend.get_window_extent(renderer).height - 0.97 * fig.bbox.height
    if short > 0:  # many groups: grow the figure rather than clip the legend
        fig.set_figheight(fig.get_figheight() + short / fig.dpi)
        fig.canvas.draw()
    for width in range(100, 20, -10):  # the widest wrap that fits over the axes
        ax.set_title(_wrap(title, width), fontsize=FONT + 1)
        fig.canvas.draw()
        if ax.title.get_window_extent(renderer).width <= ax.bbox.width:
            break
    fig.set_layout_engine("none")  # freeze: what is placed and measured now is what is saved


def _save(fig, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    _pyplot().close(fig)


def curves_figure(table):
    """Fig. 5 style: train (dashed) and val (solid) top-1 error per epoch, one colour per group;
    None if no run has a curve."""
    from matplotlib.lines import Line2D

    fig, ax = _figure()
    handles = [Line2D([], [], color="k", ls="-"), Line2D([], [], color="k", ls="--")]
    labels = ["val", "train"]
    for i, (label, runs) in enumerate(table.runs.items()):
        # More groups than colours: a marker tells the colours' second use from the first.
        style = {"color": f"C{i % 10}", "marker": MARKERS[i // 10 % len(MARKERS)]
                 if len(table.runs) > 10 else None, "markersize": 5}
        states = {r["status"] for r in runs}
        if "finished" not in states:  # a partial curve is still a curve, but say so
            label += f" ({', '.join(sorted(states))})"
        drawn = None
        for key, ls in (("val/top1_err", "-"), ("train/top1_err", "--")):
            x, y = mean_curve(runs, key)
            if x:
                line, = ax.plot(x, y, ls=ls, markevery=max(1, len(x) // 6), **style)
                drawn = drawn or line
        if drawn is not None:
            handles.append(drawn)
            labels.append(label)
    if len(handles) == 2:  # no run has a curve
        _pyplot().close(fig)
        return None
    ax.set_xlabel("epoch", fontsize=FONT)
    ax.set_ylabel("top-1 error (%)", fontsize=FONT)
    ax.xaxis.get_major_locator().set_params(integer=True)
    _finish(fig, ax, table.title, handles, labels, "mean over seeds")
    return fig


def plot_curves(table, path: Path) -> bool:
    """`curves_figure` as a PNG at `path`; False (nothing written) if there is no curve."""
    fig = curves_figure(table)
    if fig is not None:
        _save(fig, path)
    return fig is not None


def _points(table, series: bool) -> dict[str, list[tuple[float, float, str]]]:
    """{legend entry: [(params in M, error, point name)]}. With `series`, labels are
    "<series>: <network>" and points are named by C x d; else each label is one entry."""
    found: dict[str, list[tuple[float, float, str]]] = {}
    for label, runs in table.runs.items():
        params, err = known(runs, "params"), stat(runs, "top1")[0]
        if params is None or err is None:
            continue
        name, _, network = label.partition(": ")
        c, d = runs[0].get("cardinality"), runs[0].get("bottleneck_width")
        point = f"{c}x{d}d" if c and d else network or label
        found.setdefault(name if series and network else label, []).append(
            (params / 1e6, err, point))
    return found


def error_vs_params_figure(table, series: bool = False):
    """Fig. 7 style: final top-1 error vs parameters; None if no run has both.

    series: one line per series ("<series>: <network>" labels, Fig. 7's cardinality and
    width), points named directly by C x d; else one marker per setting, named in the legend
    (settings of different recipes are not a trend to draw a line through)."""
    from matplotlib.lines import Line2D

    found = _points(table, series)
    if not found:
        return None
    fig, ax = _figure()
    handles, named = [], {}
    for i, points in enumerate(found.values()):
        points.sort()
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        marker = MARKERS[i // 10 % len(MARKERS)]
        ax.plot(xs, ys, ls="-" if series else "none", marker=marker, markersize=7,
                color=f"C{i % 10}")
        handles.append(Line2D([], [], ls="-" if series else "none", marker=marker,
                              markersize=7, color=f"C{i % 10}"))
        for x, y, point in points:  # a point two series share (Fig. 7's 1x64d): once, black
            key = (round(x, 6), round(y, 6), point)
            named[key] = "k" if key in named else f"C{i % 10}"
    ax.set_xlabel("parameters (M)", fontsize=FONT)
    ax.set_ylabel("top-1 error (%)", fontsize=FONT)
    ax.margins(x=0.12, y=0.12)
    _finish(fig, ax, table.title, handles, list(found), "series" if series else
            "data: network (setting)")
    if series:
        _name_points(fig, ax, named)
    return fig


def plot_error_vs_params(table, path: Path, series: bool = False) -> bool:
    """`error_vs_params_figure` as a PNG at `path`; False (nothing written) if it is empty."""
    fig = error_vs_params_figure(table, series)
    if fig is not None:
        _save(fig, path)
    return fig is not None


def _name_points(fig, ax, named: dict[tuple[float, float, str], str]) -> None:
    """Label each point where the label meets no other label, point or line and stays inside
    the axes: right of it, else left, then further up or down (with a leader line)."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    pad = 4 * fig.dpi / 72  # pixels around each marker
    taken = [Bbox.from_bounds(*(ax.transData.transform((x, y)) - pad), 2 * pad, 2 * pad)
             for x, y, _ in named]
    lines = [line.get_transform().transform_path(line.get_path()) for line in ax.lines
             if line.get_linestyle() not in ("None", "none", "")]
    steps = [0] + [s * k for k in range(1, 9) for s in (1, -1)]  # label lines up or down
    for (x, y, text), color in sorted(named.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        best = None
        for dy in (step * 1.3 * SMALL for step in steps):
            for dx, ha in ((7, "left"), (-7, "right")):
                label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                                    ha=ha, va="center", fontsize=SMALL, color=color)
                box = label.get_window_extent(renderer)
                clear = inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1) \
                    and not any(box.overlaps(t) for t in taken) \
                    and not any(line.intersects_bbox(box, filled=False) for line in lines)
                if clear:
                    best = label
                    break
                label.remove()
            if best is not None:
                break
        if best is None:  # nowhere clear: the first place, rather than no name at all
            best = ax.annotate(text, (x, y), xytext=(7, 0), textcoords="offset points",
                               ha="left", va="center", fontsize=SMALL, color=color)
        elif best.xyann[1]:  # moved off its point: a leader line says whose name it is
            best.remove()
            best = ax.annotate(text, (x, y), xytext=best.xyann, textcoords="offset points",
                               ha=best.get_ha(), va="center", fontsize=SMALL, color=color,
                               arrowprops={"arrowstyle": "-", "lw": 0.6, "color": color,
                                           "shrinkA": 0, "shrinkB": 4})
        best.set_in_layout(False)
        taken.append(best.get_window_extent(renderer))


def claims_figure(verdicts):
    """Each judged comparison of `claims.judge`: our difference with its 95% interval (a bar),
    the paper's (a cross), zero (the line a claim must clear). None when nothing was judged."""
    steps = [(v, s) for v in verdicts for s in v.steps if s.ours is not None]
    if not steps:
        return None
    fig, ax = _figure()
    fig.set_figheight(max(SIZE[1], 0.35 * len(steps) + 1.5))
    colours = {"holds": "tab:green", "contradicted": "tab:red", "not resolved": "tab:gray"}
    for y, (_, s) in enumerate(reversed(steps)):
        ax.errorbar(s.ours, y, xerr=[[s.ours - s.low], [s.high - s.ours]], fmt="o",
                    color=colours[s.word], capsize=3)
        if s.paper is not None:
            ax.plot(s.paper, y, "x", color="black", markersize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(steps)),
                  [_wrap(f"{v.claim.source}: {s.label}", 60) for v, s in reversed(steps)],
                  fontsize=SMALL)
    ax.set_xlabel("top-1 error difference (%): > 0 where the paper says so", fontsize=FONT)
    handles = [ax.plot([], [], "o", color=c)[0] for c in colours.values()]
    handles.append(ax.plot([], [], "x", color="black")[0])
    _finish(fig, ax, "The paper's claims: our difference with its 95% interval over seeds",
            handles, [*colours, "the paper's difference"], "step")
    return fig


def plot_claims(verdicts, path: Path) -> bool:
    """`claims_figure` as a PNG; False when there is nothing to draw."""
    fig = claims_figure(verdicts)
    if fig is None:
        return False
    _save(fig, path)
    return True
