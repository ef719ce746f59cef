"""Model complexity as the paper counts it, and the width solver behind its Table 2.

    >>> complexity(create_model("resnext50_32x4d"), 224)   # {'params': 25028904, 'macs': ...}
    >>> solve_bottleneck_width(8)                          # 14, as in Table 2

The paper's "FLOPs" are multiply-adds (arXiv:1611.05431, Table 1 footnote). They are measured
with `torch.utils.flop_counter` (which counts 2 FLOPs per multiply-add) on meta tensors, so even
ResNet-200 costs no real memory or compute to count.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import UserError
from .resnext import Bottleneck

# Table 2's template: the conv2-stage block of ResNet-50 (C = 1, d = 64), 256-d in and out.
TEMPLATE = (1, 64)


def complexity(model: nn.Module, image_size: int) -> dict[str, int]:
    """Parameter count and multiply-adds of one forward pass on a 3 x size x size image."""
    params = sum(p.numel() for p in model.parameters())
    meta = {k: torch.empty_like(v, device="meta")
            for k, v in (*model.named_parameters(), *model.named_buffers())}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            torch.func.functional_call(model, meta,
                                       torch.empty(1, 3, image_size, image_size, device="meta"))
    finally:
        model.train(was_training)
    return {"params": params, "macs": counter.get_total_flops() // 2}


def block_cost(cardinality: int, bottleneck_width: int) -> int:
    """Parameters of a conv2-stage block (256-d in/out, no BN): C * (256d + 9d^2 + 256d).

    Counted from the real block (built on the meta device), not from the formula, so the
    solver and the network can never disagree.
    """
    with torch.device("meta"):
        block = Bottleneck(256, 64, cardinality=cardinality, bottleneck_width=bottleneck_width)
    return sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Conv2d))


def solve_bottleneck_width(cardinality: int, template: tuple[int, int] = TEMPLATE) -> int:
    """The d whose block cost is closest to the template's at this C (paper Table 2).

    The cost grows with d, so bisect for the first d at or above the target and keep whichever
    of it and its predecessor lands closer (ties go to the smaller, cheaper d).
    """
    if not isinstance(cardinality, int) or cardinality < 1:
        raise UserError(f"cardinality must be an integer >= 1, got {cardinality!r}")
    target = block_cost(*template)
    lo, hi = 1, 1
    while block_cost(cardinality, hi) < target:
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if block_cost(cardinality, mid) < target else (lo, mid)
    if lo > 1 and target - block_cost(cardinality, lo - 1) <= block_cost(cardinality, lo) - target:
        return lo - 1
    return lo
