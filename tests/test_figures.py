"""The table's figures as a slide shows them, and the data they name. `pytest -q
tests/test_figures.py`.

Each figure is drawn from realistic many-group records and measured, as saved, with
matplotlib's renderer: the title, axis labels, tick labels, legend and point labels lie inside
the canvas, the legend lies off the axes, and no two labels overlap.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from test_table import CIFAR, DIGITS, by_title, record

from resnext_lit.experiments.figures import plot_curves, plot_error_vs_params
from resnext_lit.experiments.table import build_tables, summarize
from resnext_lit.facts import data_name, dataset_name
from resnext_lit.models.registry import FIG7, TABLE3

# Fig. 7's networks at their sizes (M; a series' points match the other's in size, as the
# paper chose them) and errors close enough that point labels would meet if placed naively.
FIG7_POINTS = {"cardinality (d=64)": [(4.6, 4.9), (8.8, 4.45), (17.3, 4.1), (34.4, 3.65),
                                      (68.1, 3.58)],
               "width (C=1)": [(4.6, 4.9), (8.9, 4.6), (17.5, 4.45), (34.6, 4.3), (68.5, 4.25)]}


def with_curve(rec: dict, level: float, epochs: int = 30) -> dict:
    """`rec` with a decaying train/val curve whose floor is `level`."""
    rec["epochs"] = [{"epoch": e, "train/top1_err": level + 60 * 0.85 ** e,
                      "val/top1_err": level + 2 + 50 * 0.87 ** e} for e in range(epochs)]
    return rec


def fig7_records() -> list[dict]:
    return [with_curve(record(arch, err, recipe="cifar_paper", data=CIFAR, num_classes=10,
                              params=int(params * 1e6)), err)
            for series, archs in FIG7.items()
            for arch, (params, err) in zip(archs, FIG7_POINTS[series])]


def other_records() -> list[dict]:
    """The demo's network at several recipes and widths, on digits and on CIFAR-10: seven
    groups, some with long names ("... (epochs 2 (first row: 100))")."""
    demo = dict(recipe="demo", data=DIGITS, num_classes=10)
    records = [with_curve(record("resnext11_8x4d", 2.5 + s / 4, seed=s, params=972_106,
                                 **demo), 2.5) for s in range(3)]
    records += [with_curve(record("resnext11_8x4d", 6.1, max_epochs=2, params=972_106, **demo),
                           6.1, epochs=2),
                with_curve(record("resnext11_8x4d", 2.9, form="b", params=972_106, **demo), 2.9)]
    for c, params, err in ((1, 290_000, 4.4), (2, 420_000, 3.3), (4, 610_000, 2.7)):
        records.append(with_curve(record(f"resnext11_{c}x4d", err, params=params, **demo), err))
    records.append(with_curve(record("resnext29_8x64d", 9.5, recipe="demo", data=CIFAR,
                                     num_classes=10, depth=11, bottleneck_width=4,
                                     params=972_106), 9.5))
    return records


def sweep_records() -> list[dict]:
    """The demo's network at 16 learning rates: more groups than colours, and a legend taller
    than a 16:9 figure."""
    records = []
    for i in range(16):
        rec = record("resnext11_8x4d", 2.5 + i / 5, recipe="demo", data=DIGITS, num_classes=10,
                     params=972_106)
        rec["config"]["model"] = {"lr": round(0.05 * (i + 1), 2)}
        records.append(with_curve(rec, 2.5 + i / 5))
    return records


def table3_records() -> list[dict]:
    """Every Table 3 cell (10 groups, short names)."""
    return [with_curve(record(arch, 20 + i / 3), 20 + i / 3)
            for i, arch in enumerate(a for archs in TABLE3.values() for a in archs)]


def saved_figure(monkeypatch, plot, *args, **kwargs) -> Figure:
    """The figure `plot` saves, kept to be measured (the PNG is written as usual)."""
    kept, save = [], Figure.savefig

    def keep(fig, *a, **k):
        kept.append(fig)
        return save(fig, *a, **k)

    monkeypatch.setattr(Figure, "savefig", keep)
    assert plot(*args, **kwargs)
    [fig] = kept
    FigureCanvasAgg(fig)  # closing it detached its canvas; measure with the one that drew it
    return fig


def legends(fig: Figure) -> list:
    """The figure's legends, its own and its axes' (either may hold one)."""
    return [*fig.legends, *[ax.get_legend() for ax in fig.axes if ax.get_legend()]]


def entries(fig: Figure) -> list[str]:
    [legend] = legends(fig)
    return [t.get_text().replace("\n", " ") for t in legend.get_texts()]


def text_boxes(fig: Figure) -> dict[str, list]:
    """Window extents of the text a reader sees, by kind."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    [ax] = fig.axes

    def boxes(artists):
        return [a.get_window_extent(renderer) for a in artists
                if a is not None and a.get_visible() and a.get_text().strip()]

    def ticks(axis, view):  # ticks outside the view are not drawn
        lo, hi = sorted(view)
        return [label for label, at in zip(axis.get_ticklabels(), axis.get_ticklocs())
                if lo <= at <= hi]

    return {"title": boxes([getattr(fig, "_suptitle", None), ax.title]),
            "axis labels": boxes([ax.xaxis.label, ax.yaxis.label]),
            "tick labels": boxes(ticks(ax.xaxis, ax.get_xlim()) + ticks(ax.yaxis, ax.get_ylim())),
            "legend": [legend.get_window_extent(renderer) for legend in legends(fig)],
            "point labels": boxes(ax.texts)}


def assert_fits_a_slide(fig: Figure) -> None:
    """Everything inside the canvas, the legend off the data, no label on another."""
    found = text_boxes(fig)
    canvas = fig.bbox
    for kind, boxes in found.items():
        for box in boxes:
            assert box.x0 >= canvas.x0 - 1 and box.y0 >= canvas.y0 - 1 and \
                box.x1 <= canvas.x1 + 1 and box.y1 <= canvas.y1 + 1, (kind, box, canvas)
    assert found["title"] and len(found["axis labels"]) == 2 and found["tick labels"]
    [ax] = fig.axes
    plot = ax.get_window_extent(fig.canvas.get_renderer())
    assert plot.width > 0.45 * canvas.width, "the plot is squeezed to a sliver"
    [legend] = found["legend"]
    assert not legend.overlaps(plot), "the legend covers the data"
    labels = found["point labels"]
    lines = [line.get_transform().transform_path(line.get_path()) for line in ax.lines
             if line.get_linestyle() not in ("None", "none", "")]
    for i, a in enumerate(labels):
        assert not a.overlaps(legend) and not any(a.overlaps(t) for t in found["title"])
        assert not any(line.intersects_bbox(a, filled=False) for line in lines), \
            ("a point label lies on a line", a)
        for b in labels[i + 1:]:
            assert not a.overlaps(b), ("point labels overlap", a, b)


@pytest.mark.parametrize("records, start", [(other_records, "Other"),
                                            (sweep_records, "Other"),
                                            (table3_records, "Table 3"),
                                            (fig7_records, "Fig. 7")])
def test_curves_fit_a_slide_with_the_legend_off_the_curves(records, start, monkeypatch,
                                                           tmp_path):
    table = by_title(build_tables(records()), start)
    assert len(table.runs) >= 7
    fig = saved_figure(monkeypatch, plot_curves, table, tmp_path / "curves.png")
    assert_fits_a_slide(fig)
    named = entries(fig)
    assert named[:2] == ["val", "train"] and len(named) == 2 + len(table.runs)


@pytest.mark.parametrize("records, start, series", [(other_records, "Other", False),
                                                    (sweep_records, "Other", False),
                                                    (fig7_records, "Fig. 7", True)])
def test_error_vs_params_fits_a_slide_and_its_labels_never_collide(records, start, series,
                                                                   monkeypatch, tmp_path):
    table = by_title(build_tables(records()), start)
    fig = saved_figure(monkeypatch, plot_error_vs_params, table, tmp_path / "e.png",
                       series=series)
    assert_fits_a_slide(fig)
    ax = fig.axes[0]
    named = sorted(t.get_text() for t in ax.texts)
    if series:  # Fig. 7: each network named once, by C x d, shared 1x64d too
        assert named == sorted({"1x64d", "2x64d", "4x64d", "8x64d", "16x64d", "1x99d",
                                "1x150d", "1x222d", "1x325d"})
        assert entries(fig) == list(FIG7)
    else:  # one legend entry per setting, named by its data
        assert not named and len(entries(fig)) == len(table.runs)
        assert all(e.split(": ")[0] in ("digits", "cifar10") for e in entries(fig))


def test_a_loader_is_never_the_data():
    """Records and tables name the data, not the DataModule that read it: a beton of the
    demo's digits is not "ffcv"; without a better source the file it read names it."""
    def module(name, **hparams):
        return type(name, (), {"hparams": hparams})()

    ffcv = module("FFCVDataModule", train_path="runs/demo/data/digits_train.beton",
                  val_path="runs/demo/data/digits_val.beton")
    assert dataset_name(ffcv, 10) == "digits_train.beton"
    assert dataset_name(module("FFCVDataModule", train_path=None,
                               val_path="betons/val.beton"), 10) == "val.beton"  # validate
    assert dataset_name(ffcv, 1000) == "imagenet"
    assert dataset_name(module("ImageFolderDataModule", train_dir="data/flowers",
                               val_dir="data/flowers_val"), 102) == "flowers"
    assert dataset_name(module("DigitsDataModule"), 10) == "digits"
    assert dataset_name(module("CIFARDataModule"), 100) == "cifar100"
    said = module("FFCVDataModule", train_path="x/train.beton")
    said.dataset = "digits"  # a DataModule that knows its data says so
    assert dataset_name(said, 10) == "digits"
    assert data_name("resnext_lit.data.ffcv.FFCVDataModule", {}, 10) is None  # unknown, not "ffcv"

    # A record written when a run on betons was named "ffcv" (the demo's, before this fix).
    rec = record("resnext11_8x4d", 2.8, recipe="demo", num_classes=10, params=972_106,
                 data={"class_path": "resnext_lit.data.ffcv.FFCVDataModule",
                       "init_args": {"train_path": "runs/demo/data/digits.beton",
                                     "val_path": "runs/demo/data/digits_val.beton"}})
    rec["dataset"] = "ffcv"
    assert summarize(rec)["dataset"] == "digits.beton"
    other = by_title(build_tables([rec]), "Other")
    assert other.rows[0][4] == "digits.beton" and "ffcv" not in " ".join(other.runs)
    assert summarize({**rec, "dataset": "imagenet"})["dataset"] == "imagenet"  # as recorded


def test_a_figure_of_nothing_is_not_written(tmp_path):
    empty = SimpleNamespace(title="Other settings", runs={})
    assert not plot_curves(empty, tmp_path / "c.png")
    assert not plot_error_vs_params(empty, tmp_path / "e.png")
    assert not list(tmp_path.iterdir())
