"""The W&B Report, built offline: `pytest -q tests/test_dashboard.py`.

Saving needs a server; here the report object is built, its panels are serialised to W&B's
report spec, and its metric and config names are checked against what the training logs.
"""

from __future__ import annotations

import time

import wandb_workspaces.reports.v2 as wr

from resnext_lit.experiments.dashboard import build_report, main
from resnext_lit.models import model_config
from resnext_lit.training.record_writer import METRICS
from resnext_lit.training.wandb_logger import run_facts


def panels(report, kind):
    return [p for b in report.blocks for p in getattr(b, "panels", []) if isinstance(p, kind)]


def test_report_has_the_ablation_panels_for_one_sweep():
    report = build_report("my-team", "resnext-lit", sweep="abc123")
    assert (report.entity, report.project) == ("my-team", "resnext-lit")
    assert "abc123" in report.title
    curves = panels(report, wr.LinePlot)
    assert [p.y for p in curves] == [["val/top1_err"], ["train/top1_err"], ["val/top5_err"]]
    assert all(p.x == "epoch" and p.groupby_aggfunc == "mean"
               and p.groupby_rangefunc == "stddev" for p in curves)
    scatter = panels(report, wr.ScatterPlot)
    assert [p.x for p in scatter] == [wr.Config("params"), wr.Config("macs")]
    assert all(p.y == wr.SummaryMetric("val/top1_err") for p in scatter)
    assert panels(report, wr.RunComparer) and panels(report, wr.ParallelCoordinatesPlot)
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    for runset in (g.runsets[0] for g in grids):
        # one group per setting: CIFAR-10 and CIFAR-100 runs of one network never average
        assert runset.groupby == ["config.dataset", "config.recipe", "config.network"]
        assert "Sweep" in runset.filters and "abc123" in runset.filters
        assert "summary:val/top1_err" in runset.pinned_columns
    for panel in curves + scatter:  # each panel serialises to W&B's spec without a server
        assert panel._to_model() is not None


def test_report_without_sweep_covers_the_project():
    report = build_report("my-team", "resnext-lit")
    runset = next(b for b in report.blocks if isinstance(b, wr.PanelGrid)).runsets[0]
    assert not runset.filters and "project resnext-lit" in report.title


def test_report_names_match_what_training_logs():
    """A renamed metric or config key would leave the dashboard's panels empty."""
    report = build_report("e", "p")
    plotted = {y for p in panels(report, wr.LinePlot) for y in p.y}
    assert plotted <= set(METRICS)
    group, _, facts = run_facts("resnext29_8x64d", model_config("resnext29_8x64d", depth=11,
                                                                 bottleneck_width=4), 16,
                                "demo", "digits")
    # W&B's run group and the report's grouping name the same setting
    assert group == "/".join(facts[k] for k in ("dataset", "recipe", "network"))
    used = {p.x.name for p in panels(report, wr.ScatterPlot)}
    used |= {c.metric.name for p in panels(report, wr.ParallelCoordinatesPlot)
             for c in p.columns if isinstance(c.metric, wr.Config)}
    runset = next(b for b in report.blocks if isinstance(b, wr.PanelGrid)).runsets[0]
    used |= {c.split(":")[1].removesuffix(".value") for c in runset.pinned_columns
             if c.startswith("config:") and "seed" not in c}
    assert used <= set(facts), used - set(facts)


def test_cli_dry_run_prints_the_outline(capsys):
    assert main(["--entity", "e", "--sweep", "s1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "LinePlot: val top-1 error" in out and "ScatterPlot" in out


def test_saving_without_credentials_fails_in_one_line_without_network(tmp_path, monkeypatch,
                                                                      capsys):
    import wandb

    from resnext_lit.cli import main as cli
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    wandb.teardown()
    start = time.monotonic()
    assert cli(["dashboard", "--entity", "e"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: saving a report needs W&B credentials: `wandb login`"]
    wandb.teardown()
