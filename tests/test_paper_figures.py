"""Complexity against the paper's stated figures (../shared/PAPER.md, arXiv:1611.05431).

Run with `-s` to see the measured figures printed beside the paper's.
"""

import pytest
import torch

from resnext_lit.models import complexity, create_model, model_entry, solve_bottleneck_width
from resnext_lit.models.complexity import block_cost
from resnext_lit.models.registry import FIG7_WIDE, TABLE3_SETTINGS


def measure(name, size=224):
    with torch.device("meta"):
        cost = complexity(create_model(name), size)
    return cost["params"] / 1e6, cost["macs"] / 1e9


def within(measured, paper, tol):
    print(f"    measured {measured:8.3f}  paper {paper:8.3f}  ({(measured / paper - 1):+.2%})")
    return abs(measured / paper - 1) <= tol


@pytest.mark.parametrize("name, params_m, gmacs", [("resnet50", 25.5, 4.1),
                                                   ("resnext50_32x4d", 25.0, 4.2)])
def test_table1_within_2_percent(name, params_m, gmacs):
    measured_params, measured_gmacs = measure(name)
    assert within(measured_params, params_m, 0.02)
    assert within(measured_gmacs, gmacs, 0.02)


TABLE3_NAMES = [f"resnext{depth}_{c}x{d}d" for depth in (50, 101) for c, d in TABLE3_SETTINGS]
TABLE4_2X = ["resnet200", "resnet101_wide", "resnext101_2x64d", "resnext101_64x4d"]


@pytest.mark.parametrize("name", TABLE3_NAMES + TABLE4_2X)
def test_table3_and_table4_complexity_within_5_percent(name):
    paper = model_entry(name)["paper"]["gmacs"]
    assert within(measure(name)[1], paper, 0.05)


@pytest.mark.parametrize("name", ["resnext29_8x64d", "resnext29_16x64d"])
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
