"""Weight conversion between the block forms (a), (b) and (c): the paper's equivalence claim.

    >>> net_a = convert_form(create_model("resnext50_32x4d"), "a")   # same function, form (a)
    >>> copy_form(net_c, net_a)   # in place, e.g. pretrained form (c) weights into form (a)

Sec. 3.3 of arXiv:1611.05431: "the three forms are strictly equivalent". Form (c)'s grouped
convs are the canonical weights: conv1 and conv2 split by output channel into the C paths;
form (a)'s per-path 1x1 projections are conv3's input-channel slices, whose sum equals conv3 on
the concatenation. BN is per channel, so splitting it is exact in train mode too.
"""

from __future__ import annotations

from operator import attrgetter

import torch
from torch import nn

from ..errors import UserError
from .resnext import FORMS, Bottleneck, ResNeXt

_BN_STATE = ("weight", "bias", "running_mean", "running_var")


def _bn(bn: nn.BatchNorm2d) -> dict[str, torch.Tensor]:
    return {k: getattr(bn, k) for k in _BN_STATE}


def grouped_weights(block: Bottleneck) -> dict[str, torch.Tensor]:
    """A block's weights in form (c) layout (torchvision names), whatever its form."""
    if block.form == "c":
        return {k: v for k, v in block.state_dict().items() if not k.startswith("downsample")}
    paths = block.paths

    def cat(name: str) -> torch.Tensor:  # one tensor of every path, stacked along channels
        return torch.cat([attrgetter(name)(p) for p in paths])

    out = {"conv1.weight": cat("conv1.weight"), "conv2.weight": cat("conv2.weight"),
           "conv3.weight": (torch.cat([p.conv3.weight for p in paths], dim=1)
                            if block.form == "a" else block.conv3.weight)}
    for i in (1, 2):
        out.update({f"bn{i}.{k}": cat(f"bn{i}.{k}") for k in _BN_STATE})
        out[f"bn{i}.num_batches_tracked"] = getattr(paths[0], f"bn{i}").num_batches_tracked
    out.update({f"bn3.{k}": v for k, v in _bn(block.bn3).items()})
    out["bn3.num_batches_tracked"] = block.bn3.num_batches_tracked
    return out


def load_grouped_weights(block: Bottleneck, weights: dict[str, torch.Tensor]) -> None:
    """Set a block of any form from form (c) weights (the inverse of `grouped_weights`)."""
    if block.form == "c":
        block.load_state_dict(weights, strict=False)
        return
    state = {f"bn3.{k}": weights[f"bn3.{k}"] for k in (*_BN_STATE, "num_batches_tracked")}
    C = block.cardinality
    if block.form == "b":
        state["conv3.weight"] = weights["conv3.weight"]
    chunks = {k: v.chunk(C) for k, v in weights.items()
              if k.startswith(("conv1", "conv2", "bn1", "bn2")) and v.dim() > 0}
    conv3 = weights["conv3.weight"].chunk(C, dim=1)
    for i in range(C):
        state.update({f"paths.{i}.{k}": v[i] for k, v in chunks.items()})
        for bn in ("bn1", "bn2"):
            state[f"paths.{i}.{bn}.num_batches_tracked"] = weights[f"{bn}.num_batches_tracked"]
        if block.form == "a":
            state[f"paths.{i}.conv3.weight"] = conv3[i]
    block.load_state_dict(state, strict=False)


def copy_form(src: ResNeXt, dst: ResNeXt) -> None:
    """Set `dst` to compute exactly what `src` computes: the same network in any two forms."""
    if {**src.config, "form": "c"} != {**dst.config, "form": "c"}:
        raise UserError(f"copy_form needs the same network in two forms, got {src.config} "
                        f"and {dst.config}")
    # Stem, shortcuts and classifier are the same in every form: copy them by name.
    names = dst.state_dict().keys()
    shared = {k: v for k, v in src.state_dict().items() if ".paths." not in k and k in names}
    dst.load_state_dict(shared, strict=False)
    def blocks(net: ResNeXt) -> list[Bottleneck]:
        return [m for m in net.modules() if isinstance(m, Bottleneck)]

    with torch.no_grad():
        for a, b in zip(blocks(src), blocks(dst)):
            load_grouped_weights(b, {k: v.clone() for k, v in grouped_weights(a).items()})


def convert_form(model: ResNeXt, form: str) -> ResNeXt:
    """A new network of block form `form` that computes exactly what `model` computes."""
    if form not in FORMS:
        raise UserError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    target = ResNeXt(**{**model.config, "form": form}).to(next(model.parameters()).device)
    target.train(model.training)
    copy_form(model, target)
    return target
