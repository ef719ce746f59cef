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

from resnext_lit.experiments.records import load_local, record_from_wandb
from resnext_lit.experiments.table import (
    APART,
    GAP,
    build_tables,
    main,
    markdown,
    summarize,
    write_csv,
)
from resnext_lit.models import model_entry

from helpers.records import CIFAR, DIGITS, IMAGENET, record


def old_record(arch, top1, **config):
    """A record written before the dataset, stage, max_epochs, scale and resolution keys."""
    rec = record(arch, top1)
    for key in ("stage", "dataset", "max_epochs", "scale", "resolution"):
        del rec[key]
    rec["config"] = {"data": IMAGENET, **config}
    return rec


def by_title(tables, start):
    [table] = [t for t in tables if t.title.startswith(start)]
    return table


def apart_rows(tables):
    """The "runs apart" table as {its "differs from the cell in" text: row}."""
    return {row[4]: row for row in by_title(tables, APART).rows}


PAPER_CELL = "cells: form (c), 100 epochs, global batch 256, 224 px train / 224 px val (crop 0.875)"


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
    demo = [record("resnext11_8x4d", 3.0 + s, recipe="demo", data=DIGITS, num_classes=10,
                   seed=s, params=900_000) for s in range(2)]
    # The old demo: the paper's 8x64d overridden to 11 layers and d=4 is the same network.
    demo.append(record("resnext29_8x64d", 3.5, recipe="demo", data=DIGITS, num_classes=10,
                       depth=11, bottleneck_width=4, seed=2, params=900_000))
    tables = build_tables(fig7 + demo)
    f7 = by_title(tables, "Fig. 7")
    assert [r[1] for r in f7.rows if r[3] != GAP] == [
        "resnext29_1x64d", "resnext29_2x64d", "resnext29_4x64d", "resnext29_1x64d"]
    other = by_title(tables, "Other")
    [row] = other.rows  # the demo's network is not in the paper: no paper column
    assert row[:6] == ["resnext11_8x4d", "11", "8x4d", "c", "digits", "demo"]
    assert row[8] == "3.50 ± 0.50 (n=3)"
    assert not model_entry("resnext11_8x4d")["in_paper"]
    assert not any("resnext11" in cell["row"] for t in tables if t is not other
                   for cell in t.cells)


def test_summarize_reads_partial_and_failure_records():
    failure = {"status": "failed", "arch": "no_such_net", "sweep_params": {}, "returncode": 2}
    s = summarize(failure)
    assert s["status"] == "failed" and s["top1"] is None and not s["paper_setting"]
    assert summarize(record("resnext50_32x4d", 22.0))["paper_setting"]
    assert not summarize(record("resnext11_8x4d", 9.0, data=DIGITS))["paper_setting"]
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
                "data": IMAGENET, "_wandb": {}, "stage": "fit", "dataset": "imagenet",
                "run_id": "k3x9a0qz", "run_name": "imagenet_paper",
                "max_epochs": 100, "resolution": record("resnet50", 1.0)["resolution"],
                **{f"scale/{k}": v for k, v in record("resnet50", 1.0)["scale"].items()}},
        summary={"val/top1_err": {"min": 21.9, "last": 22.1}, "val/top5_err": {"last": 6.1}},
        history=lambda keys=None, pandas=False: [
            {"epoch": 0, "train/top1_err": 60.0}, {"epoch": 0, "val/top1_err": 50.0},
            {"epoch": 1, "val/top1_err": 22.1}])
    rec = record_from_wandb(run)
    assert rec["final"] == {"val/top1_err": 22.1, "val/top5_err": 6.1}
    assert rec["best"]["val/top1_err"] == 21.9
    assert rec["epochs"][0] == {"epoch": 0, "train/top1_err": 60.0, "val/top1_err": 50.0}
    assert (rec["dataset"], rec["stage"], rec["max_epochs"], rec["scale"]["global_batch"]) == (
        "imagenet", "fit", 100, 256)  # a flattened "scale/..." config is read back as a dict
    assert rec["run"] == {"id": "k3x9a0qz", "name": "imagenet_paper"}
    t3 = by_title(build_tables([rec]), "Table 3")
    assert "22.10" in markdown([t3]) and PAPER_CELL in t3.notes  # the same cell as results.json

    # Logged before run ids, a W&B run may be one piece of a resumed run: never a seed.
    run.config = {k: v for k, v in run.config.items() if k not in ("run_id", "run_name")}
    piece = record_from_wandb(run)
    assert piece["stage"] == "W&B piece" and piece["run"] is None
    tables = build_tables([rec, piece])
    assert "22.10" in markdown([by_title(tables, "Table 3")])
    assert "(n=2)" not in markdown([by_title(tables, "Table 3")])
    assert "W&B piece" in markdown(tables)


def test_a_run_counts_once_however_its_records_were_copied(tmp_path):
    runs = tmp_path / "runs"
    early = {**record("resnext50_32x4d", 30.0), "run": {"id": "aaaa1111", "name": "x"}}
    later = {**record("resnext50_32x4d", 22.0), "run": {"id": "aaaa1111", "name": "x"}}
    early["epochs"] = later["epochs"][:1]
    for folder, rec in (("x/aaaa1111", later), ("copy/aaaa1111", early),
                        ("x/bbbb2222", {**record("resnext50_32x4d", 22.4, seed=1),
                                        "run": {"id": "bbbb2222", "name": "x"}})):
        (runs / folder).mkdir(parents=True)
        (runs / folder / "results.json").write_text(json.dumps(rec))
    records = load_local(runs)
    assert sorted(r["final"]["val/top1_err"] for r in records) == [22.0, 22.4]
    assert "22.20 ± 0.28 (n=2)" in markdown([by_title(build_tables(records), "Table 3")])


def test_the_cell_is_the_recipes_own_global_batch_before_the_longest_run():
    own = [record("resnext50_32x4d", 22.0 + s / 5, seed=s, max_epochs=100) for s in range(2)]
    longer = [record("resnext50_32x4d", 21.0, global_batch=512, max_epochs=120)]
    for rec in own + longer:
        rec["config"]["global_batch_size"] = 256  # what the recipe states
    t3 = by_title(build_tables(own + longer), "Table 3")
    assert "22.10 ± 0.14 (n=2)" in markdown([t3])
    assert ("epochs 120 (cell: 100); global batch 512 (cell: 256); per-device batch 64 "
            "(cell: 32)") in apart_rows(build_tables(own + longer))


def test_a_smoke_run_is_shown_apart_and_never_averaged_into_the_paper_cell():
    # The smoke run comes first: the cell is the most planned epochs, not the first record.
    records = [record("resnext50_32x4d", 90.0, max_epochs=2, seed=7),
               record("resnext50_32x4d", 22.0, seed=0), record("resnext50_32x4d", 22.4, seed=1)]
    tables = build_tables(records)
    t3 = by_title(tables, "Table 3")
    rows = {row[0]: row[1:] for row in t3.rows}
    assert rows["50 layers, ours"][4] == "22.20 ± 0.28 (n=2)"
    assert PAPER_CELL in t3.notes and "90.00" not in markdown([t3])
    assert any(APART in note for note in t3.notes)
    [smoke] = apart_rows(tables).values()
    assert smoke[:5] == ["Table 3", "resnext50_32x4d", "imagenet", "imagenet_paper",
                         "epochs 2 (cell: 100)"]
    assert smoke[5:] == ["90.00", f"{GAP} (finished)", "2"]  # its top-1, top-5, epochs run
    assert not [t for t in tables if t.title.startswith("Other")]


def test_another_global_batch_or_resolution_is_apart_with_the_difference_named():
    fast = {"train": 160, "train_final": 192, "val": 256}
    records = [record("resnext101_32x4d", 21.1 + s / 5, 5.6, seed=s) for s in range(2)]
    records += [record("resnext101_32x4d", 21.9, 5.9, global_batch=512),
                record("resnext101_32x4d", 23.0, 6.5, resolution=fast)]
    tables = build_tables(records)
    for title in ("Table 3", "Table 4"):  # the same cell in both tables: the 2 seeds only
        assert "21.20 ± 0.14 (n=2)" in markdown([by_title(tables, title)])
    apart = apart_rows(tables)
    batch = "global batch 512 (cell: 256); per-device batch 64 (cell: 32)"
    assert set(apart) == {batch,
                          "train res 160 (cell: 224); final train res 192 (cell: 224); "
                          "val res 256 (cell: 224)"}
    assert apart[batch][0] == "Table 3, Table 4"  # listed once
    assert apart[batch][5:7] == ["21.90", "5.90"]


def test_a_run_built_with_overrides_lands_in_its_registered_networks_cell():
    # --model.arch resnext50_32x4d --model.cardinality 8 --model.bottleneck_width 14
    records = [record("resnext50_32x4d", 22.5, cardinality=8, bottleneck_width=14)]
    tables = build_tables(records)
    rows = {row[0]: row[1:] for row in by_title(tables, "Table 3").rows}
    assert rows["50 layers, ours"][3] == "22.50" and rows["50 layers, ours"][4] == GAP
    assert rows["50 layers, difference"][3] == "+0.20"
    assert [t.title.split(":")[0] for t in tables] == ["Table 3"]  # no Other, no Table 5


def test_table5_takes_fit_records_at_224_and_validate_records_at_320():
    val320 = {"val": 320, "val_crop_ratio": 0.875}
    records = [record("resnext101_64x4d", 20.9, 5.5), record("resnet200", 21.6, 5.7),
               record("resnext101_64x4d", 19.3, 4.5, stage="validate", resolution=val320),
               record("resnet200", 20.0, 4.9, stage="validate", resolution=val320),
               record("resnext50_32x4d", 21.0, 5.0, stage="validate", resolution=val320)]
    tables = build_tables(records)
    t5 = by_title(tables, "Table 5")
    assert t5.header[2] == "top-1 224 ours" and t5.header[8] == "top-1 320 ours"
    for name, arch, ours in (("ResNeXt-101", "resnext101_64x4d", (20.9, 5.5, 19.3, 4.5)),
                             ("ResNet-200", "resnet200", (21.6, 5.7, 20.0, 4.9))):
        paper = model_entry(arch)["paper"]
        theirs = (paper["top1_err"], paper["top5_err"], paper["top1_err_320"],
                  paper["top5_err_320"])
        expected = [name, "64x4d" if name == "ResNeXt-101" else "1x64d"]
        for o, p in zip(ours, theirs):
            expected += [f"{o:.2f}", f"{p:.2f}", f"{o - p:+.2f}"]
        assert next(row for row in t5.rows if row[0] == name) == expected
    # The fit records still fill Table 4; no validate record reaches Table 3 or 4.
    t4 = markdown([by_title(tables, "Table 4")])
    assert "20.90" in t4 and "21.60" in t4 and "19.30" not in t4 and "20.00" not in t4
    assert not [t for t in tables if t.title.startswith("Table 3")]
    [other] = by_title(tables, "Other").rows  # a validate record of a non-Table-5 network
    assert other[0] == "resnext50_32x4d" and other[8] == "21.00" and "validate" in other[12]


def test_csv_carries_each_cells_effective_recipe(tmp_path):
    records = [record("resnext50_32x4d", 22.0), record("resnext50_32x4d", 80.0, max_epochs=2)]
    write_csv(build_tables(records), tmp_path / "tables.csv")
    with open(tmp_path / "tables.csv") as f:
        cells = list(csv.DictReader(f))
    for key in ("dataset", "recipe", "depth", "cardinality", "bottleneck_width", "form",
                "epochs", "global_batch", "train_res", "val_res", "val_crop_ratio"):
        assert key in cells[0]
    [cell] = [c for c in cells if c["table"].startswith("Table 3") and c["row"] == "50 layers"
              and c["column"] == "32x4d"]
    assert {k: cell[k] for k in ("dataset", "recipe", "depth", "cardinality", "bottleneck_width",
                                 "form", "epochs", "global_batch", "train_res", "val_res",
                                 "val_crop_ratio", "n", "ours_mean")} == {
        "dataset": "imagenet", "recipe": "imagenet_paper", "depth": "50", "cardinality": "32",
        "bottleneck_width": "4", "form": "c", "epochs": "100", "global_batch": "256",
        "train_res": "224", "val_res": "224", "val_crop_ratio": "0.875", "n": "1",
        "ours_mean": "22.0"}
    gap = next(c for c in cells if c["column"] == "2x40d" and c["row"] == "50 layers")
    assert (gap["depth"], gap["cardinality"], gap["epochs"]) == ("50", "2", "")  # a gap
    [smoke] = [c for c in cells if c["table"].startswith(APART) and c["column"] == "top-1"]
    assert (smoke["epochs"], smoke["ours_mean"]) == ("2", "80.0")


def test_old_records_without_the_recipe_keys_are_still_placed():
    planned, counted = old_record("resnext50_32x4d", 22.0, trainer={"max_epochs": 90}), \
        old_record("resnext50_2x40d", 22.8)
    s = summarize(planned)
    assert (s["dataset"], s["stage"], s["epochs"], s["global_batch"], s["val_res"]) == (
        "imagenet", "fit", 90, None, None)
    assert summarize(counted)["epochs"] == 3  # no planned epochs: the epochs it recorded
    t3 = by_title(build_tables([planned, counted]), "Table 3")
    rows = {row[0]: row[1:] for row in t3.rows}
    assert rows["50 layers, ours"][4] == "22.00" and rows["50 layers, ours"][1] == "22.80"
    assert t3.notes[0].startswith("cells (one recipe each): ")  # 3 and 90 epochs
    assert "form (c), 90 epochs, global batch unrecorded, resolution unrecorded for " \
        "resnext50_32x4d" in t3.notes[0]
    # An old record and a new one of the same network are two recipes (None matches only None).
    tables = build_tables([planned, record("resnext50_32x4d", 22.4)])
    assert "22.40" in markdown([by_title(tables, "Table 3")])
    assert "global batch unrecorded (cell: 256)" in " ".join(apart_rows(tables))


def test_an_old_record_is_on_the_data_its_network_is_registered_on():
    """No `dataset` key: the registry's dataset of the network it built, never a guess."""
    def old(arch, **kw):
        rec = record(arch, 5.0, **kw)
        del rec["dataset"]
        return summarize(rec)["dataset"]
    assert old("resnext50_32x4d") == "imagenet"
    assert old("resnext29_8x64d", data=CIFAR, num_classes=100) == "cifar100"
    assert old("resnext29_8x64d", data=DIGITS, num_classes=10, depth=11, bottleneck_width=4) \
        == "digits"  # built resnext11_8x4d, the digits demo's network
    assert old("resnext29_8x64d", data=DIGITS, cardinality=3) is None  # no registered network


def test_a_cell_averages_seeds_only_never_other_settings():
    """Runs of seed 0 that differ in one training or evaluation setting each: every one is a
    row (or apart from the paper cell) of its own that names how it differs; two runs of one
    seed in one cell say so."""
    def demo(seed=0, precision=None, data=None, **model):
        rec = record("resnext11_8x4d", 10.0 + len(model) + seed, recipe="demo", data=DIGITS,
                     num_classes=10, seed=seed)
        rec["config"]["model"] = {"lr": 0.4, "zero_init_residual": False, **model}
        rec["config"]["data"] = {**DIGITS, "init_args": {"padding": 2, **(data or {})}}
        rec["precision"] = precision or "32-true"
        return rec
    variants = [demo(zero_init_residual=True), demo(ema_decay=0.999), demo(flip_tta=True),
                demo(lr=0.8), demo(label_smoothing=0.1), demo(mixup_alpha=0.2),
                demo(weights="runs/x/last.pth"), demo(precision="bf16-mixed"),
                demo(data={"padding": 4})]
    other = by_title(build_tables([demo(), demo(), *variants]), "Other")
    assert len(other.rows) == 1 + len(variants)
    assert other.rows[0][-1] == ("form (c), 100 epochs, global batch 128, 32 px train / 32 px "
                                 "val, 32-true")  # digits have no crop: none is named
    base = [label for label, runs in other.runs.items() if len(runs) == 2]
    assert len(base) == 1 and "(n=2, 2 runs of seed 0)" in markdown([other])
    named = " | ".join(other.runs)
    for difference in ("zero-init residual True (first row: False)",
                       "EMA decay 0.999 (first row: none)", "flip TTA True (first row: none)",
                       "lr 0.8 (first row: 0.4)", "label smoothing 0.1 (first row: none)",
                       "MixUp alpha 0.2 (first row: none)", "weights last.pth (first row: none)",
                       "precision bf16-mixed (first row: 32-true)", "padding 4 (first row: 2)"):
        assert difference in named, (difference, named)

    paper = [record("resnext50_32x4d", 22.0 + s / 5, seed=s) for s in range(2)]
    ema = record("resnext50_32x4d", 21.0, seed=0)
    ema["config"]["model"] = {"ema_decay": 0.9999}
    tables = build_tables([*paper, ema])
    assert "22.10 ± 0.14 (n=2)" in markdown([by_title(tables, "Table 3")])
    assert set(apart_rows(tables)) == {"EMA decay 0.9999 (cell: none)"}
