"""Complexity against the paper's stated figures (../shared/PAPER.md, arXiv:1611.05431).

Run with `-s` to see the measured figures printed beside the paper's.
"""

import pytest
import torch

from resnext_lit.models import complexity, create_model, model_entry, solve_bottleneck_width
from resnext_lit.models.flops import block_cost
from resnext_lit.models.registry import FIG7_WIDE, TABLE1, TABLE3, TABLE4, TABLE7


def measure(name, size=224):
    with torch.device("meta"):
        cost = complexity(create_model(name), size)
    return cost["params"] / 1e6, cost["macs"] / 1e9


def within(measured, paper, tol):
    print(f"    measured {measured:8.3f}  paper {paper:8.3f}  ({(measured / paper - 1):+.2%})")
    return abs(measured / paper - 1) <= tol


def test_table1_is_resnet50_and_resnext50_32x4d_at_their_stated_figures():
    assert TABLE1 == ("resnext50_1x64d", "resnext50_32x4d")
    assert model_entry("resnet50") is model_entry(TABLE1[0])  # ResNet-50 is ResNeXt-50 1x64d
    assert [(model_entry(n)["paper"]["params_m"], model_entry(n)["paper"]["gmacs"])
            for n in TABLE1] == [(25.5, 4.1), (25.0, 4.2)]


@pytest.mark.parametrize("name", TABLE1)
def test_table1_within_2_percent(name):
    measured_params, measured_gmacs = measure(name)
    assert within(measured_params, model_entry(name)["paper"]["params_m"], 0.02)
    assert within(measured_gmacs, model_entry(name)["paper"]["gmacs"], 0.02)


TABLE3_NAMES = [name for row in TABLE3.values() for name in row]
TABLE4_2X = [name for _, _, name in TABLE4 if name not in TABLE3_NAMES]


@pytest.mark.parametrize("name", TABLE3_NAMES + TABLE4_2X)
def test_table3_and_table4_complexity_within_5_percent(name):
    paper = model_entry(name)["paper"]["gmacs"]
    assert within(measure(name)[1], paper, 0.05)


def test_table4_rows_carry_top1_and_top5():
    assert TABLE4_2X == ["resnet200", "resnet101_wide", "resnext101_2x64d", "resnext101_64x4d"]
    for _, _, name in TABLE4:
        assert {"top1_err", "top5_err", "gmacs"} <= set(model_entry(name)["paper"]), name


@pytest.mark.parametrize("name", TABLE7)
def test_table7_params_within_2_percent(name):
    assert within(measure(name, 32)[0], model_entry(name)["paper"]["params_m"], 0.02)


def test_table2_widths_and_block_cost():
    table2 = {1: 64, 2: 40, 4: 24, 8: 14, 32: 4}
    for c, d in table2.items():
        assert solve_bottleneck_width(c) == d
        # the paper's formula C * (256d + 9d^2 + 256d), ~70k for every column
        assert block_cost(c, d) == c * (256 * d + 9 * d * d + d * 256)
        assert abs(block_cost(c, d) / block_cost(1, 64) - 1) < 0.03
    assert [c * d for c, d in table2.items()] == [64, 80, 96, 112, 128]


def test_fig7_wide_baselines_are_the_solvers_answers():
    for c, d in FIG7_WIDE.items():
        assert solve_bottleneck_width(1, template=(c, 64)) == d
        # so the wide C=1 net matches the cardinality net in size (shortcuts differ: within 5%)
        assert within(measure(f"resnext29_1x{d}d", 32)[0], measure(f"resnext29_{c}x64d", 32)[0],
                      0.05)


def test_solver_rejects_bad_cardinality():
    with pytest.raises(ValueError, match="cardinality"):
        solve_bottleneck_width(0)
