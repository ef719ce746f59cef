"""The model zoo: every network of the paper's Tables 1-5 and 7, and Fig. 7, as data.

    >>> from resnext_lit.models import create_model, list_models, model_entry
    >>> net = create_model("resnext50_32x4d", num_classes=10, form="a")
    >>> model_entry("resnet50")["paper"]          # an alias of resnext50_1x64d: Tables 1 and 3

One `register` call per network: its `ResNeXt` arguments (depth, C, d), the data and native
resolution its figures are on (like timm's pretrained cfg), other names for it, and the figures
the paper reports for it (arXiv:1611.05431; top-1/top-5 error in %, single crop at the native
size; CIFAR entries carry CIFAR-10 and CIFAR-100 test error). `TABLE3` ... `FIG7` lay the
paper's tables out by name, in its row order; `resnext_lit.experiments.table` reads them.
Networks the paper does not train (torchvision's extra variants, the CPU demo's) say
`in_paper=False`: no figure, no table. Overrides (`num_classes`, `form`, `cardinality`,
`bottleneck_width`, `depth`, `zero_init_residual`, `blurpool`) apply to any name.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from .resnext import ResNeXt

# Blocks per stage (paper Table 1 and Sec. 4; Sec. 5.3 for the CIFAR ResNeXt-29). Depth 11, one
# block per CIFAR stage, is not in the paper: it is the CPU demo's network.
DEPTHS = {11: (1, 1, 1), 29: (3, 3, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3),
          200: (3, 24, 36, 3)}
CIFAR_DEPTHS = (11, 29)
# The data a network's figures are on, and the resolution they are measured at.
NATIVE_SIZE = {"imagenet": 224, "cifar": 32, "digits": 16}  # digits: configs/demo.yaml's 16 px
OVERRIDES = ("num_classes", "form", "cardinality", "bottleneck_width", "depth",
             "zero_init_residual", "blurpool")
SHAPE = ("depth", "cardinality", "bottleneck_width")  # what makes two entries one network


class RegistryError(RuntimeError):
    """The zoo's own data contradicts itself (a name twice, a table naming an unregistered or
    not-in-paper network): a bug in the code that registers, never the user's input, so it
    keeps its traceback (a `UserError` would print as one line of bad input)."""


_REGISTRY: dict[str, dict] = {}
_ALIASES: dict[str, str] = {}   # another name -> the registered name of the same network


def registered_name(depth: int, cardinality: int, bottleneck_width: int) -> str | None:
    """The registered name of the network (depth, C, d), e.g. a run built as `resnext50_32x4d
    --model.cardinality 8 --model.bottleneck_width 14` is "resnext50_8x14d"; None if unlisted.
    Aliases never come back: (50, 1, 64) is "resnext50_1x64d", not "resnet50"."""
    shape = (depth, cardinality, bottleneck_width)
    return next((name for name, e in _REGISTRY.items()
                 if tuple(e[k] for k in SHAPE) == shape), None)


def register(name: str, depth: int, cardinality: int, bottleneck_width: int, *,
             dataset: str = "imagenet", aliases: tuple[str, ...] = (), in_paper: bool = True,
             **paper) -> None:
    """Add one network. `paper` holds the figures the paper reports for it (for tables, tests);
    `aliases` are other names of the same network ("resnet50"); one network, one entry."""
    for new in (name, *aliases):
        if new in _REGISTRY or new in _ALIASES:
            raise RegistryError(f"model name {new!r} is registered twice")
    same = registered_name(depth, cardinality, bottleneck_width)
    if same:
        raise RegistryError(f"{name} is the network {same} (depth {depth}, {cardinality}x"
                        f"{bottleneck_width}d): register it as an alias of {same}")
    if paper and not in_paper:
        raise RegistryError(f"{name} is not in the paper but has paper figures {sorted(paper)}")
    _REGISTRY[name] = dict(depth=depth, cardinality=cardinality, bottleneck_width=bottleneck_width,
                           dataset=dataset, image_size=NATIVE_SIZE[dataset], aliases=aliases,
                           in_paper=in_paper, tables=(), paper=paper)
    _ALIASES.update(dict.fromkeys(aliases, name))


# ImageNet-1K. Table 1: ResNet-50 (= ResNeXt-50 1x64d) and ResNeXt-50 32x4d, with their exact
# size and cost; both are rows of Table 3 too.
register("resnext50_1x64d", 50, 1, 64, aliases=("resnet50",), top1_err=23.9, gmacs=4.1,
         params_m=25.5)
register("resnext50_32x4d", 50, 32, 4, top1_err=22.2, gmacs=4.2, params_m=25.0)
# Table 3: cardinality vs width at ~constant complexity (Table 2's settings), with each row's
# stated GFLOPs; Table 4 gives the top-5 of its two 1x-complexity references.
register("resnext50_2x40d", 50, 2, 40, top1_err=23.0, gmacs=4.1)
register("resnext50_4x24d", 50, 4, 24, top1_err=22.6, gmacs=4.1)
register("resnext50_8x14d", 50, 8, 14, top1_err=22.3, gmacs=4.1)
register("resnext101_1x64d", 101, 1, 64, aliases=("resnet101",), top1_err=22.0, top5_err=6.0,
         gmacs=7.8)
register("resnext101_2x40d", 101, 2, 40, top1_err=21.7, gmacs=7.8)
register("resnext101_4x24d", 101, 4, 24, top1_err=21.4, gmacs=7.8)
register("resnext101_8x14d", 101, 8, 14, top1_err=21.3, gmacs=7.8)
register("resnext101_32x4d", 101, 32, 4, top1_err=21.2, top5_err=5.6, gmacs=7.8)
# Table 4: doubling complexity to ~15 GFLOPs; Table 5 adds the 320 px test of two of them.
register("resnet200", 200, 1, 64, top1_err=21.7, top5_err=5.8, gmacs=15.0, top1_err_320=20.1,
         top5_err_320=4.8)
register("resnet101_wide", 101, 1, 100, top1_err=21.3, top5_err=5.7, gmacs=15.0)
register("resnext101_2x64d", 101, 2, 64, top1_err=20.7, top5_err=5.5, gmacs=15.0)
register("resnext101_64x4d", 101, 64, 4, top1_err=20.4, top5_err=5.3, gmacs=15.0,
         top1_err_320=19.1, top5_err_320=4.4)
# torchvision's other variants: not in the paper's tables.
register("resnet152", 152, 1, 64, in_paper=False)
register("resnext101_32x8d", 101, 32, 8, in_paper=False)
register("resnext152_32x4d", 152, 32, 4, in_paper=False)

# CIFAR-10 and CIFAR-100 (Sec. 5.3, Table 7): test error in %, mean of 10 runs.
register("resnext29_8x64d", 29, 8, 64, dataset="cifar", params_m=34.4, cifar10_err=3.65,
         cifar100_err=17.77)
register("resnext29_16x64d", 29, 16, 64, dataset="cifar", params_m=68.1, cifar10_err=3.58,
         cifar100_err=17.31)
# Fig. 7 (a plot, no figures to quote): raising cardinality at d = 64 ...
for _c in (1, 2, 4):
    register(f"resnext29_{_c}x64d", 29, _c, 64, dataset="cifar")
# ... against widening a C = 1 net to the same block complexity. The widths are the width
# solver's answers for C = 2, 4, 8, 16 (tests check `solve_bottleneck_width` reproduces them).
FIG7_WIDE = {2: 99, 4: 150, 8: 222, 16: 325}
for _d in FIG7_WIDE.values():
    register(f"resnext29_1x{_d}d", 29, 1, _d, dataset="cifar")

# The CPU demo (configs/demo.yaml, sweeps/demo_cardinality.yaml): one block per CIFAR stage on
# scikit-learn's digits, C = 1 ... 8 at d = 4. Not in the paper.
for _c in (1, 2, 4, 8):
    register(f"resnext11_{_c}x4d", 11, _c, 4, dataset="digits", in_paper=False)

# The paper's tables by registered name, in its order.
TABLE1 = ("resnext50_1x64d", "resnext50_32x4d")
TABLE3_SETTINGS = ((1, 64), (2, 40), (4, 24), (8, 14), (32, 4))   # Table 2's (C, d) columns
TABLE3 = {depth: tuple(f"resnext{depth}_{c}x{d}d" for c, d in TABLE3_SETTINGS)
          for depth in (50, 101)}
TABLE4 = (("ResNet-101", "1x64d", "resnext101_1x64d"),            # (model, setting, name)
          ("ResNeXt-101", "32x4d", "resnext101_32x4d"),
          ("ResNet-200", "1x64d", "resnet200"),
          ("ResNet-101, wider", "1x100d", "resnet101_wide"),
          ("ResNeXt-101", "2x64d", "resnext101_2x64d"),
          ("ResNeXt-101", "64x4d", "resnext101_64x4d"))
# Table 5: single-crop test at 224 and 320 px, as He et al. 2016 (Identity Mappings) test.
TABLE5 = (TABLE4[2], TABLE4[5])
TABLE5_SIZES = (224, 320)
TABLE7 = ("resnext29_8x64d", "resnext29_16x64d")
FIG7 = {"cardinality (d=64)": tuple(f"resnext29_{c}x64d" for c in (1, 2, 4, 8, 16)),
        "width (C=1)": ("resnext29_1x64d", *(f"resnext29_1x{d}d" for d in FIG7_WIDE.values()))}
_LAYOUTS = {"Table 1": TABLE1, "Table 3": [n for row in TABLE3.values() for n in row],
            "Table 4": [row[2] for row in TABLE4], "Table 5": [row[2] for row in TABLE5],
            "Table 7": TABLE7, "Fig. 7": [n for series in FIG7.values() for n in series]}
for _title, _names in _LAYOUTS.items():
    for _name in dict.fromkeys(_names):
        if not _REGISTRY[_name]["in_paper"]:
            raise RegistryError(f"{_name} is in {_title} but registered with in_paper=False")
        _REGISTRY[_name]["tables"] += (_title,)
for _name, _entry in _REGISTRY.items():
    if _entry["in_paper"] and not _entry["tables"]:
        raise RegistryError(f"{_name} is registered as in the paper but is in none of its tables")


def list_models() -> list[str]:
    """Every registered network, sorted, once each (aliases are in `model_entry(n)["aliases"]`)."""
    return sorted(_REGISTRY)


def canonical(name: str) -> str:
    """The registered name of `name` ("resnet50" -> "resnext50_1x64d"); UserError if unknown."""
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    known = [*_REGISTRY, *_ALIASES]
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else "; see `python -m resnext_lit models`"
    raise UserError(f"unknown model {name!r}{hint}")


def model_entry(name: str) -> dict:
    """The registry's dict for `name` or an alias of it: depth, cardinality, bottleneck_width,
    dataset, image_size, aliases, in_paper, tables (where the paper has it), paper (figures)."""
    return _REGISTRY[canonical(name)]


def dataset_of(name: str, num_classes: int | None = None) -> str | None:
    """What a table calls the data of `name`'s figures: "imagenet", "digits", or for a CIFAR
    network "cifar10" / "cifar100" by `num_classes` (None if not given)."""
    dataset = model_entry(name)["dataset"]
    if dataset != "cifar":
        return dataset
    return None if num_classes is None else f"cifar{num_classes}"


def model_config(name: str, **overrides) -> dict:
    """The `ResNeXt` keyword arguments for `name` with `overrides` applied, validated."""
    entry = model_entry(name)
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise UserError(f"unknown model override {unknown[0]!r}; allowed: {', '.join(OVERRIDES)}")
    args = {k: entry[k] for k in SHAPE}
    args.update({k: v for k, v in overrides.items() if v is not None})
    depth = args.pop("depth")
    if depth not in DEPTHS:
        raise UserError(f"depth must be one of {', '.join(map(str, DEPTHS))}, got {depth!r}")
    stem = "cifar" if depth in CIFAR_DEPTHS else "imagenet"
    args.setdefault("num_classes", 10 if stem == "cifar" else 1000)
    config = dict(layers=DEPTHS[depth], stem=stem, **args)
    from .resnext import check_args  # torch: imported by what builds networks, not by readers

    check_args(**config)  # a config this returns builds: the CLI checks flags with it
    return config


def create_model(name: str, **overrides) -> ResNeXt:
    """Build the registered network `name`, e.g. `create_model("resnext101_64x4d")`."""
    from .resnext import ResNeXt

    return ResNeXt(**model_config(name, **overrides))
