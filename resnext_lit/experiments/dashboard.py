"""A shared W&B Report of the ablations: `python -m resnext_lit dashboard`.

    python -m resnext_lit dashboard --entity my-team --project resnext-lit --sweep abc123
    python -m resnext_lit dashboard --entity my-team --project resnext-lit --dry-run  # no server

Builds, with `wandb-workspaces` (W&B's report API), a report of the runs of one project (or one
sweep of it): validation and training top-1 error per epoch grouped by setting (`GROUP_BY`:
dataset, recipe and network, as `resnext_lit.training.wandb_logger` groups runs; mean and std over
seeds, the paper's Fig. 5 view), final error vs parameters and vs MACs (Fig. 7's view), C and d
against the error (parallel coordinates), and the runs table with the columns the paper's
tables use. Saving needs a W&B server and credentials; `--dry-run` builds the report and prints
its outline without touching the network (W&B's API needs the server even to serialise a run
set). The config keys and metrics are the ones `resnext_lit.training.wandb_logger` and the module
log. With `--runs FOLDER` (or, saving a sweep's report, the sweep's runs) it ends with the paper's
claims judged on those runs, as `table` prints them (`resnext_lit.experiments.claims`).
"""

from __future__ import annotations

import argparse

from ..errors import UserError

METRICS = ("val/top1_err", "val/top5_err", "train/top1_err")
# One group per setting: Table 7's CIFAR-10 and CIFAR-100 runs of one network never average.
GROUP_BY = ("dataset", "recipe", "network")
TABLE_COLUMNS = ("config:network.value", "config:dataset.value", "config:recipe.value",
                 "config:arch.value", "config:depth.value", "config:cardinality.value",
                 "config:bottleneck_width.value",
                 "config:form.value", "config:params.value", "config:macs.value",
                 "config:seed_everything.value", "summary:val/top1_err",
                 "summary:val/top5_err", "run:state")


def build_report(entity: str, project: str, sweep: str | None = None,
                 title: str | None = None, claims: str | None = None):
    """The report object; nothing is sent anywhere until `.save()`. `claims`: the "Claims"
    section `table` writes (`claims.markdown`), shown as a block of its own."""
    import wandb_workspaces.reports.v2 as wr

    scope = f"sweep {sweep}" if sweep else f"project {project}"
    runset = wr.Runset(entity=entity, project=project, name=scope,
                       filters=f"Metric('Sweep') = '{sweep}'" if sweep else "",
                       groupby=[f"config.{key}" for key in GROUP_BY],
                       pinned_columns=list(TABLE_COLUMNS))

    def curves(metric: str, title: str):
        return wr.LinePlot(title=title, x="epoch", y=[metric], title_x="epoch",
                           title_y="top-1 error (%)" if "top1" in metric else "top-5 error (%)",
                           groupby_aggfunc="mean", groupby_rangefunc="stddev")

    grid = [
        wr.H2("Error per epoch, grouped by dataset, recipe and network (paper Fig. 5)"),
        wr.P("Mean over seeds, shaded: one standard deviation. Solid lines in the paper are "
             "validation error, dashed are training error."),
        wr.PanelGrid(runsets=[runset], panels=[
            curves("val/top1_err", "val top-1 error"),
            curves("train/top1_err", "train top-1 error"),
            curves("val/top5_err", "val top-5 error")]),
        wr.H2("Error vs model size (paper Fig. 7 and Tables 3-4)"),
        wr.PanelGrid(runsets=[runset], panels=[
            wr.ScatterPlot(title="val top-1 error vs parameters", x=wr.Config("params"),
                           y=wr.SummaryMetric("val/top1_err")),
            wr.ScatterPlot(title="val top-1 error vs multiply-adds", x=wr.Config("macs"),
                           y=wr.SummaryMetric("val/top1_err")),
            wr.ParallelCoordinatesPlot(title="cardinality and width vs error", columns=[
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config("cardinality")),
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config("bottleneck_width")),
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config("params")),
                wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("val/top1_err"))])]),
        wr.H2("Runs"),
        wr.P("One row per run; the runs table of this grid lists network, dataset, recipe, C, d, "
             "params, MACs, "
             "seed and the final errors. `python -m resnext_lit table --sweep "
             f"{entity}/{project}/{sweep or '<sweep id>'} --out tables` prints the paper's "
             "tables with our numbers next to its."),
        wr.PanelGrid(runsets=[runset], panels=[wr.RunComparer(diff_only="split")]),
    ]
    if claims:
        grid += [wr.H2("The paper's claims in these runs"), wr.MarkdownBlock(text=claims)]
    return wr.Report(entity=entity, project=project,
                     title=title or f"ResNeXt ablations: {scope}",
                     description="Aggregated Residual Transformations (arXiv:1611.05431): "
                                 "cardinality vs depth and width, reproduced.",
                     blocks=grid)


def outline(report) -> list[str]:
    """Human-readable lines: every block and panel, with the metrics it plots."""
    lines = [f"report {report.title!r} in {report.entity}/{report.project}"]
    for block in report.blocks:
        kind = type(block).__name__
        if kind == "PanelGrid":
            for panel in block.panels:
                name = getattr(panel, "title", None) or type(panel).__name__
                lines.append(f"    {type(panel).__name__}: {name}")
        elif kind == "MarkdownBlock":  # the claims: every line, as the report shows them
            lines += [f"  {kind}:", *(f"    {line}" for line in block.text.splitlines())]
        else:
            text = getattr(block, "text", "")
            lines.append(f"  {kind}: {text if isinstance(text, str) else ''}"[:100])
    return lines


def _claims(args) -> str | None:
    """The "Claims" section for the report: from local records, or (saving a sweep's report)
    from the sweep's runs through W&B's API; None when there is nothing to judge."""
    from .claims import judge, markdown
    from .records import load_local, load_wandb
    from .table import build_tables

    if args.runs:
        records = load_local(args.runs)
    elif args.sweep and not args.dry_run:
        records = load_wandb(f"{args.entity}/{args.project}/{args.sweep}")
    else:
        return None
    return markdown(judge(build_tables(records)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_lit dashboard",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", required=True, help="W&B team or user")
    parser.add_argument("--project", default="resnext-lit", help="W&B project")
    parser.add_argument("--sweep", help="only the runs of this sweep id")
    parser.add_argument("--title", help="report title")
    parser.add_argument("--runs", help="judge the paper's claims on the results.json records "
                        "under this folder (default: on the sweep's runs, read from W&B)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build and print the report; do not save it")
    args = parser.parse_args(argv)
    text = _claims(args)
    try:
        report = build_report(args.entity, args.project, args.sweep, args.title, text)
    except ImportError:
        raise UserError("the dashboard needs wandb-workspaces: "
                        "pip install wandb-workspaces") from None
    print("\n".join(outline(report)))
    if args.dry_run:
        return 0
    import wandb

    from ..wandb_access import has_credentials, reachable

    url = wandb.setup().settings.base_url
    if not has_credentials(url):  # checked here: the API would otherwise prompt or retry
        raise UserError("saving a report needs W&B credentials: `wandb login`")
    if not reachable(url):
        raise UserError(f"{url} is not reachable; build the report with --dry-run")
    report.save()
    print(f"saved: {report.url}")
    return 0
