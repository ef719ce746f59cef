"""The table builder: a pure function of run records. `pytest -q tests/test_table.py`.

Fake records follow the results.json schema; the paper's figures come from the registry, so
these tests also catch a table that quotes the wrong row. The end-to-end check on real runs is
in tests/test_sweeps.py (the local runner's outputs).
"""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest

from resnext_lit.models import model_entry
from resnext_lit.table import GAP, build_tables, main, markdown, record_from_wandb, summarize

IMAGENET = {"class_path": "resnext_lit.data.ffcv.FFCVDataModule"}
CIFAR = {"class_path": "resnext_lit.data.cifar.CIFARDataModule"}
DIGITS = {"class_path": "resnext_lit.data.digits.DigitsDataModule"}


def record(arch, top1, top5=None, status="finished", seed=0, recipe="imagenet_paper",
           data=IMAGENET, num_classes=1000, **model):
    entry = model_entry(arch)
    stem = "cifar" if entry["depth"] == 29 else "imagenet"
    model = {"depth": entry["depth"], "cardinality": entry["cardinality"],
             "bottleneck_width": entry["bottleneck_width"], "form": "c", "stem": stem,
             "num_classes": num_classes, "params": 25_000_000, "macs": 4_200_000_000, **model}
    epochs = [{"epoch": e, "train/top1_err": 80.0 - 20 * e, "val/top1_err": 70.0 - 15 * e}
              for e in range(3)]
    return {"status": status, "arch": arch, "model": model, "recipe": recipe, "seed": seed,
            "config": {"data": data}, "epochs": epochs, "images_per_s": 100.0,
            "final": {"val/top1_err": top1, "val/top5_err": top5} if top1 is not None else None,
            "best": {"val/top1_err": top1}}


def by_title(tables, start):
    [table] = [t for t in tables if t.title.startswith(start)]
    return table


def test_table3_layout_ours_paper_difference_and_seed_statistics():
    records = [record("resnext50_32x4d", 22.0, seed=0), record("resnext50_32x4d", 22.4, seed=1),
               record("resnet50", 24.0),  # ResNet-50 is the 1x64d column
               record("resnext50_8x14d", None, status="failed"),
               record("resnext101_2x40d", 50.0, status="running")]
    t3 = by_title(build_tables(records), "Table 3")
    assert t3.header == ["", "1x64d", "2x40d", "4x24d", "8x14d", "32x4d"]
    rows = {row[0]: row[1:] for row in t3.rows}
    assert rows["50 layers, ours"][4] == "22.20 ± 0.28 (n=2)"
    paper = model_entry("resnext50_32x4d")["paper"]["top1_err"]
    assert rows["50 layers, paper"][4] == f"{paper:.2f}"
    assert rows["50 layers, difference"][4] == "+0.00"
    assert rows["50 layers, ours"][0] == "24.00" and rows["50 layers, difference"][0] == "+0.10"
    # Missing, failed and running settings are gaps, never zeros.
    assert rows["50 layers, ours"][1] == GAP and rows["50 layers, difference"][1] == GAP
    assert rows["50 layers, ours"][3] == f"{GAP} (failed)"
    assert rows["101 layers, ours"][1] == f"{GAP} (running)"
    assert "0.00" not in " ".join(rows["101 layers, ours"])


def test_table4_has_top1_and_top5_and_joins_the_table3_reference_runs():
    records = [record("resnext101_64x4d", 20.9, 5.5), record("resnext101_32x4d", 21.5, 5.9)]
    tables = build_tables(records)
    t4 = by_title(tables, "Table 4")
    row = next(r for r in t4.rows if r[1] == "64x4d")
    assert row[2:] == ["20.90", "20.40", "+0.50", "5.50", "5.30", "+0.20"]
    reference = next(r for r in t4.rows if r[1] == "32x4d")
    assert reference[2] == "21.50"  # the Table 3 run, reused as Table 4's 1x reference
    assert next(r for r in t4.rows if r[0] == "ResNet-200")[2] == GAP
    assert by_title(tables, "Table 3")  # the same run also fills Table 3
    assert not [t for t in tables if t.title.startswith("Other")]


def test_table7_cifar10_and_cifar100_columns_mean_over_seeds():
    records = [record("resnext29_8x64d", 3.5 + s / 10, seed=s, recipe="cifar_paper",
                      data=CIFAR, num_classes=10, params=34_400_000) for s in range(3)]
    records.append(record("resnext29_16x64d", 17.0, recipe="cifar_paper", data=CIFAR,
                          num_classes=100, params=68_100_000))
    t7 = by_title(build_tables(records), "Table 7")
    row8, row16 = t7.rows
    assert row8[:4] == ["resnext29_8x64d", "34.4", "34.4", "3.60 ± 0.10 (n=3)"]
    assert row8[4:6] == ["3.65", "-0.05"] and row8[6] == GAP
    assert row16[3] == GAP and row16[6:] == ["17.00", "17.31", "-0.31"]


def test_fig7_series_and_digits_demo_runs_land_in_the_right_tables(tmp_path):
    fig7 = [record(f"resnext29_{c}x64d", 5.0 - c / 10, recipe="cifar_paper", data=CIFAR,
                   num_classes=10, params=c * 1_000_000) for c in (1, 2, 4)]
    demo = [record("resnext29_8x64d", 3.0 + s, recipe="demo", data=DIGITS, num_classes=10,
                   depth=11, bottleneck_width=4, seed=s, params=900_000) for s in range(2)]
    tables = build_tables(fig7 + demo)
    f7 = by_title(tables, "Fig. 7")
    assert [r[1] for r in f7.rows if r[3] != GAP] == [
        "resnext29_1x64d", "resnext29_2x64d", "resnext29_4x64d", "resnext29_1x64d"]
    other = by_title(tables, "Other")
    [row] = other.rows  # a digits run with d=4 is not the paper's 8x64d: no paper column
    assert row[:6] == ["resnext29_8x64d", "11", "8x4d", "c", "digits", "demo"]
    assert row[8] == "3.50 ± 0.71 (n=2)"


def test_summarize_reads_partial_and_failure_records():
    failure = {"status": "failed", "arch": "no_such_net", "sweep_params": {}, "returncode": 2}
    s = summarize(failure)
    assert s["status"] == "failed" and s["top1"] is None and not s["paper_setting"]
    [other] = build_tables([failure])
    assert other.rows[0][8] == f"{GAP} (failed)"


def test_markdown_csv_and_pngs_from_the_command_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    records = [record("resnext50_32x4d", 22.0), record("resnext50_2x40d", None, status="failed"),
               record("resnext29_4x64d", 4.0, recipe="cifar_paper", data=CIFAR, num_classes=10)]
    for i, rec in enumerate(records):
        (runs / f"r{i}" / "version_0").mkdir(parents=True)
        (runs / f"r{i}" / "version_0" / "results.json").write_text(json.dumps(rec))
    out = tmp_path / "tables"
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    text = (out / "tables.md").read_text()
    assert "Table 3" in text and "Fig. 7" in text and "22.00" in text
    with open(out / "tables.csv") as f:
        cells = list(csv.DictReader(f))
    cell = next(c for c in cells if c["row"] == "50 layers" and c["column"] == "2x40d")
    assert cell["ours_mean"] == "" and cell["states"] == "failed"  # a gap, not a zero
    pngs = sorted(out.glob("*.png"))
    assert any("curves" in p.name for p in pngs)
    assert any("error_vs_params" in p.name for p in pngs)
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert "tables.md" in capsys.readouterr().out


def test_empty_runs_folder_is_one_clear_error(tmp_path):
    from resnext_lit.cli import main as cli
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no results.json under"):
        main(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "t")])
    assert cli(["table", "--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "t")]) == 2


def test_sweep_source_without_credentials_is_one_clear_error(tmp_path, monkeypatch):
    import wandb
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    wandb.teardown()
    with pytest.raises(ValueError, match="--sweep needs W&B credentials"):
        main(["--sweep", "team/resnext-lit/abc123", "--out", str(tmp_path / "t")])
    wandb.teardown()


def test_wandb_run_conversion_without_a_server():
    """The --sweep path's conversion, on an object shaped like a public-API run."""
    run = SimpleNamespace(
        state="finished",
        config={"arch": "resnext50_32x4d", "recipe": "imagenet_paper", "depth": 50,
                "cardinality": 32, "bottleneck_width": 4, "form": "c", "stem": "imagenet",
                "num_classes": 1000, "params": 25_028_904, "macs": 4_230_000_000,
                "data": IMAGENET, "_wandb": {}},
        summary={"val/top1_err": {"min": 21.9, "last": 22.1}, "val/top5_err": {"last": 6.1}},
        history=lambda keys=None, pandas=False: [
            {"epoch": 0, "train/top1_err": 60.0}, {"epoch": 0, "val/top1_err": 50.0},
            {"epoch": 1, "val/top1_err": 22.1}])
    rec = record_from_wandb(run)
    assert rec["final"] == {"val/top1_err": 22.1, "val/top5_err": 6.1}
    assert rec["best"]["val/top1_err"] == 21.9
    assert rec["epochs"][0] == {"epoch": 0, "train/top1_err": 60.0, "val/top1_err": 50.0}
    t3 = by_title(build_tables([rec]), "Table 3")
    assert "22.10" in markdown([t3])
