"""The paper's claims judged on run records: `pytest -q tests/test_claims.py`.

Records are made here (`test_table.record`, the results.json shape); the verdicts, intervals and
seed counts are checked against hand computations with textbook t quantiles.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from resnext_lit.experiments import claims
from resnext_lit.experiments.claims import (
    CLAIMS,
    CONTRADICTED,
    DEMO_CLAIM,
    HOLDS,
    NOT_RESOLVED,
    NOT_RUN,
    judge,
    seeds_to_resolve,
    welch,
)
from resnext_lit.experiments.dashboard import main as dashboard_main
from resnext_lit.experiments.table import build_tables, main

from helpers.records import DIGITS, record

T_975 = {1: 12.706205, 2: 4.302653, 4: 2.776445, 5: 2.570582}  # Student's t, two-sided 95%


def runs(arch: str, errors: list[float], **kwargs) -> list[dict]:
    """One finished record per seed, with these final top-1 errors."""
    return [record(arch, e, seed=seed, **kwargs) for seed, e in enumerate(errors)]


def verdict(verdicts, key: str):
    [v] = [v for v in verdicts if v.claim.key == key]
    return v


def test_welch_interval_is_the_hand_computed_one():
    # a = [24, 26]: mean 25, sd sqrt(2); b = [22, 22]: mean 22, sd 0. se = sqrt(2/2) = 1 and
    # Welch's df = (1)^2 / (1^2 / 1) = 1, so the half-width is t(0.975, 1) = 12.706.
    difference, half, df = welch(25, math.sqrt(2), 2, 22, 0, 2)
    assert (difference, df) == (3, 1) and half == pytest.approx(T_975[1], abs=1e-5)
    # Three and three seeds, unequal spreads: se^2 = 1/3 + 4/3, df by Welch-Satterthwaite.
    difference, half, df = welch(24.0, 1.0, 3, 22.0, 2.0, 3)
    va, vb = 1 / 3, 4 / 3
    assert df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2))
    assert difference == 2.0
    # At n = 6 per cell, t(0.975, 5) x sqrt(2 / 6) = 1.484 < 1.7 (the paper's Table 3 step);
    # at n = 5, 2.776 x sqrt(2 / 5) = 1.756 does not clear it.
    assert seeds_to_resolve(1.7, math.sqrt(2), 0.0) == 6
    assert T_975[4] * math.sqrt(2 / 5) > 1.7 > T_975[5] * math.sqrt(2 / 6)


def test_each_verdict_word_from_records():
    records = [
        # Table 3, 50 layers: ResNet-50 clearly worse than 32x4d: "holds" (paper: 1.7 better).
        *runs("resnext50_1x64d", [24.0, 24.2, 23.8]),
        *runs("resnext50_32x4d", [22.1, 22.3, 22.2]),
        # A 2-epoch smoke run of 32x4d far off: kept apart by the cells, never in a claim.
        record("resnext50_32x4d", 90.0, seed=9, max_epochs=2),
        # Table 4: ResNet-200 clearly better than both: "contradicted".
        *runs("resnet200", [19.0, 19.1, 18.9]),
        *runs("resnext101_64x4d", [21.0, 21.2, 21.1]),
        *runs("resnext101_2x64d", [21.0, 21.1, 20.9]),
        # Table 4, wider: within each other's noise: "not resolved".
        *runs("resnet101_wide", [21.0, 22.0]),
        # Table 5: one run at 224 px only: "not run", naming it.
        record("resnet200", 21.5, stage="validate", resolution={"val": 320}),
    ]
    verdicts = judge(build_tables(records))
    resnet50 = verdict(verdicts, "table3-resnet50")
    assert resnet50.word == HOLDS
    (step,) = resnet50.steps
    assert step.n == (3, 3)  # the smoke run is not a seed
    assert step.ours == pytest.approx(24.0 - 22.2) and step.low > 0 and step.paper == 1.7
    assert verdict(verdicts, "table4-deeper").word == CONTRADICTED
    wider = verdict(verdicts, "table4-wider")
    assert wider.word == NOT_RESOLVED
    assert all(s.word == NOT_RESOLVED and s.seeds_needed and "seeds per cell would resolve "
               "the paper's step" in s.why for s in wider.steps)
    table5 = verdict(verdicts, "table5-320")
    assert table5.word == NOT_RUN
    assert "one run of resnet200 top-1 320: no interval" in table5.why
    assert "no finished run of resnext101_64x4d top-1 320" in table5.why
    # Table 3, 50 layers as a chain: its middle columns were never run.
    chain = verdict(verdicts, "table3-50")
    assert chain.word == NOT_RUN and "no finished run of 50 layers 2x40d" in chain.why
    # A table with no run at all, and a claim this zoo cannot test, say so.
    assert verdict(verdicts, "table7-wrn").why == "no run of Table 7"
    assert verdict(verdicts, "sec5.1-shortcuts").why == "the zoo has no network without shortcuts"
    assert not [v for v in verdicts if v.claim is DEMO_CLAIM]  # no digits ran
    assert {v.claim.key for v in verdicts} == {c.key for c in CLAIMS}


def test_a_claim_against_a_published_error():
    """Table 7: our ResNeXt-29 cells against Wide ResNet's published 4.17 / 20.50 (one-sample
    Student's t: the zoo does not train Wide ResNet)."""
    records = [*runs("resnext29_8x64d", [3.6, 3.7, 3.5], data=None, num_classes=10),
               *runs("resnext29_16x64d", [3.5, 3.6, 3.7], data=None, num_classes=10),
               *runs("resnext29_8x64d", [17.8, 17.6], data=None, num_classes=100),
               *runs("resnext29_16x64d", [17.2, 17.4], data=None, num_classes=100)]
    for r in records:
        r["config"]["data"] = {"class_path": "resnext_lit.data.cifar.CIFARDataModule"}
    wrn = verdict(judge(build_tables(records)), "table7-wrn")
    assert wrn.word == HOLDS, [claims.step_text(s) for s in wrn.steps]
    first = wrn.steps[0]  # 4.17 - mean(3.6, 3.7, 3.5) +- t(2) x 0.1 / sqrt(3)
    assert first.ours == pytest.approx(0.57)
    assert first.high - first.ours == pytest.approx(T_975[2] * 0.1 / math.sqrt(3), rel=1e-5)
    assert first.paper == pytest.approx(4.17 - 3.65)


def test_the_demo_claim_and_what_table_writes(tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    errors = {"resnext11_1x4d": [3.1, 2.9], "resnext11_2x4d": [1.7, 1.9],
              "resnext11_4x4d": [2.8, 2.6], "resnext11_8x4d": [1.9, 2.7]}
    n = 0
    for arch, values in errors.items():
        for rec in runs(arch, values, data=DIGITS, recipe="demo", num_classes=10):
            folder = runs_dir / f"run{n}"
            folder.mkdir(parents=True)
            (folder / "results.json").write_text(json.dumps(rec))
            n += 1
    assert main(["--runs", str(runs_dir), "--out", str(tmp_path / "tables")]) == 0
    out = capsys.readouterr().out
    text = (tmp_path / "tables" / "tables.md").read_text()
    assert "### Claims: does the paper's claim hold in our runs?" in text and \
        "### Claims" in out
    (line,) = [x for x in text.splitlines() if x.startswith("| digits (CPU demo)")]
    assert "**contradicted**" in line  # 2x4d beats 4x4d beyond its interval here
    assert "1x4d > 2x4d: +1.20 [" in line and "paper: no number: holds" in line
    with open(tmp_path / "tables" / "claims.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    demo = [r for r in rows if r["claim"] == "demo-cardinality"]
    assert [r["step_verdict"] for r in demo] == [HOLDS, CONTRADICTED, NOT_RESOLVED]
    assert all(r["verdict"] == CONTRADICTED for r in demo)
    assert (tmp_path / "tables" / "claims.png").stat().st_size > 5000
    # The W&B report shows the same section (built offline).
    capsys.readouterr()
    assert dashboard_main(["--entity", "e", "--runs", str(runs_dir), "--dry-run"]) == 0
    report = capsys.readouterr().out
    assert "The paper's claims in these runs" in report and "digits (CPU demo)" in report
