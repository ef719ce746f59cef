"""The model zoo: every network of the paper's Tables 1-5 and 7, and Fig. 7, as data.

    >>> from resnext_lit.models import create_model, list_models
    >>> net = create_model("resnext50_32x4d", num_classes=10, form="a")

Each entry is a dict of `ResNeXt` arguments plus the figures the paper reports for it
(arXiv:1611.05431; top-1/top-5 error in %, ImageNet single 224 crop unless the key says CIFAR).
Overrides (`num_classes`, `form`, `cardinality`, `bottleneck_width`, `depth`,
`zero_init_residual`, `blurpool`) apply to any name.
"""

from __future__ import annotations

import difflib

from ..errors import UserError
from .resnext import ResNeXt, check_block_args

# Blocks per stage (paper Table 1 and Sec. 4; Sec. 5.3 for the CIFAR ResNeXt-29). Depth 11, one
# block per CIFAR stage, is not in the paper: it is the CPU demo's network.
DEPTHS = {11: (1, 1, 1), 29: (3, 3, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3),
          200: (3, 24, 36, 3)}
CIFAR_DEPTHS = (11, 29)
OVERRIDES = ("num_classes", "form", "cardinality", "bottleneck_width", "depth",
             "zero_init_residual", "blurpool")

_REGISTRY: dict[str, dict] = {}


def register(name: str, depth: int, cardinality: int, bottleneck_width: int, **paper) -> None:
    """Add one variant; `paper` holds the figures the paper reports for it (for tables, tests)."""
    if name in _REGISTRY:
        raise UserError(f"model name {name!r} is registered twice")
    _REGISTRY[name] = dict(depth=depth, cardinality=cardinality,
                           bottleneck_width=bottleneck_width, paper=paper)


# ImageNet. Table 3: cardinality vs width at ~constant complexity (widths from Table 2).
TABLE3 = {50: (23.9, 23.0, 22.6, 22.3, 22.2), 101: (22.0, 21.7, 21.4, 21.3, 21.2)}
TABLE3_SETTINGS = ((1, 64), (2, 40), (4, 24), (8, 14), (32, 4))
TABLE3_GMACS = {50: 4.1, 101: 7.8}  # the paper's stated complexity of each Table 3 row
for _depth, _errors in TABLE3.items():
    for (_c, _d), _err in zip(TABLE3_SETTINGS, _errors):
        register(f"resnext{_depth}_{_c}x{_d}d", _depth, _c, _d, top1_err=_err,
                 gmacs=TABLE3_GMACS[_depth])
# Table 4 gives top-5 for its two 1x references.
_REGISTRY["resnext101_1x64d"]["paper"]["top5_err"] = 6.0
_REGISTRY["resnext101_32x4d"]["paper"]["top5_err"] = 5.6
# Table 1: ResNet-50 is ResNeXt-50 1x64d; Table 1 states its exact size.
register("resnet50", 50, 1, 64, top1_err=23.9, params_m=25.5, gmacs=4.1)
_REGISTRY["resnext50_32x4d"]["paper"].update(params_m=25.0, gmacs=4.2)
register("resnet101", 101, 1, 64, top1_err=22.0, top5_err=6.0, gmacs=7.8)
register("resnet152", 152, 1, 64)
# Table 4: doubling complexity to ~15 GFLOPs; Table 5 adds the 320 px test of two of them.
register("resnet200", 200, 1, 64, top1_err=21.7, top5_err=5.8, gmacs=15.0,
         top1_err_320=20.1, top5_err_320=4.8)
register("resnet101_wide", 101, 1, 100, top1_err=21.3, top5_err=5.7, gmacs=15.0)
register("resnext101_2x64d", 101, 2, 64, top1_err=20.7, top5_err=5.5, gmacs=15.0)
register("resnext101_64x4d", 101, 64, 4, top1_err=20.4, top5_err=5.3, gmacs=15.0,
         top1_err_320=19.1, top5_err_320=4.4)
register("resnext101_32x8d", 101, 32, 8)  # torchvision's; not in the paper's tables
register("resnext152_32x4d", 152, 32, 4)

# CIFAR (Sec. 5.3, Table 7): test error in %, mean of 10 runs.
register("resnext29_8x64d", 29, 8, 64, params_m=34.4, cifar10_err=3.65, cifar100_err=17.77)
register("resnext29_16x64d", 29, 16, 64, params_m=68.1, cifar10_err=3.58, cifar100_err=17.31)
# Fig. 7: raising cardinality at d = 64 ...
for _c in (1, 2, 4):
    register(f"resnext29_{_c}x64d", 29, _c, 64)
# ... against widening a C = 1 net to the same block complexity. The widths are the width
# solver's answers for C = 2, 4, 8, 16 (tests check `solve_bottleneck_width` reproduces them).
FIG7_WIDE = {2: 99, 4: 150, 8: 222, 16: 325}
for _d in FIG7_WIDE.values():
    register(f"resnext29_1x{_d}d", 29, 1, _d)


def list_models() -> list[str]:
    """Every registered name, sorted."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> dict:
    """The registry's dict for `name` (depth, C, d, paper figures); ValueError if unknown."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=4, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else "; see `python -m resnext_lit models`"
        raise UserError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def model_config(name: str, **overrides) -> dict:
    """The `ResNeXt` keyword arguments for `name` with `overrides` applied, validated."""
    entry = model_entry(name)
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise UserError(f"unknown model override {unknown[0]!r}; allowed: {', '.join(OVERRIDES)}")
    args = {k: v for k, v in entry.items() if k != "paper"}
    args.update({k: v for k, v in overrides.items() if v is not None})
    depth = args.pop("depth")
    if depth not in DEPTHS:
        raise UserError(f"depth must be one of {', '.join(map(str, DEPTHS))}, got {depth!r}")
    check_block_args(args["cardinality"], args["bottleneck_width"], args.get("form", "c"))
    stem = "cifar" if depth in CIFAR_DEPTHS else "imagenet"
    args.setdefault("num_classes", 10 if stem == "cifar" else 1000)
    return dict(layers=DEPTHS[depth], stem=stem, **args)


def registered_name(depth: int, cardinality: int, bottleneck_width: int) -> str | None:
    """The registered name of the network (depth, C, d), e.g. a run built as `resnext50_32x4d
    --model.cardinality 8 --model.bottleneck_width 14` is "resnext50_8x14d"; None if unlisted.
    ResNeXt "1x64d" names are preferred to their ResNet aliases (the same networks)."""
    found = [name for name, e in _REGISTRY.items()
             if (e["depth"], e["cardinality"], e["bottleneck_width"])
             == (depth, cardinality, bottleneck_width)]
    return min(found, key=lambda name: (not name.startswith("resnext"), name), default=None)


def create_model(name: str, **overrides) -> ResNeXt:
    """Build the registered network `name`, e.g. `create_model("resnext101_64x4d")`."""
    return ResNeXt(**model_config(name, **overrides))
