"""`python -m resnext_lit bench model [--tiny]`: our ResNeXt vs torchvision's, and forms a/b/c.

    python -m resnext_lit bench model --out runs/bench/model.json

One repeat is one training pass (forward, cross-entropy, backward) on CPU; the figure is its
time, median of the repeats after a warm-up pass, contenders interleaved.

- imagenet: our `resnext50_32x4d` (form c) vs `torchvision.models.resnext50_32x4d`, at a small
  resolution and batch so CPU passes take about a second.
- cifar: our ResNeXt-29 (CIFAR stem, 3 stages; C and d reduced for the CPU) vs the same network
  assembled from torchvision's `ResNet` and `Bottleneck` (3x3 stem, no max-pool, no 4th stage).
- forms: the same ResNeXt-29 in forms (a) and (b) vs (c), weights mapped by `convert_form`
  (paper Sec. 3.3: the three are equivalent and (c) is the fastest).

Before timing, torchvision's weights are loaded into ours with `strict=True` and both must give
the same logits: the pair is the same network, so any time difference is implementation cost.
Goal (issue 6): ours <= 1.02x torchvision's time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnext_lit.models import complexity, convert_form, create_model

from .common import Report, interleave, timed, torch_threads

NORMAL = dict(imagenet=dict(size=64, batch=8),
              cifar=dict(depth=29, cardinality=8, bottleneck_width=4, size=32, batch=8),
              repeats=15, cifar_pair_repeats=45, warmup=1, threads=1)  # pairs vary +-5-10%
TINY = dict(imagenet=dict(size=32, batch=2),
            cifar=dict(depth=11, cardinality=2, bottleneck_width=4, size=16, batch=2),
            repeats=5, cifar_pair_repeats=None, warmup=1, threads=1)
SAME_LOGITS_TOL = 1e-4


def torchvision_cifar_resnext(depth: int, cardinality: int, bottleneck_width: int,
                              num_classes: int = 10) -> nn.Module:
    """The paper's CIFAR ResNeXt from torchvision's own blocks: its ResNet with a 3x3 stem
    (64 filters, no max-pool) and three stages of (depth - 2) / 9 blocks."""
    from torchvision.models.resnet import Bottleneck, ResNet

    blocks = (depth - 2) // 9
    net = ResNet(Bottleneck, [blocks, blocks, blocks, 1], num_classes=num_classes,
                 groups=cardinality, width_per_group=bottleneck_width)
    net.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.layer4 = nn.Identity()  # built by ResNet, then dropped: the CIFAR net has 3 stages
    net.fc = nn.Linear(256 * 4, num_classes)
    return net


def check_same_network(ours: nn.Module, theirs: nn.Module, size: int) -> float:
    """Load their weights into ours (strict) and return the largest logit difference."""
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, size, size)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    ours.train(), theirs.train()
    if diff > SAME_LOGITS_TOL:
        raise AssertionError(f"not the same network: logits differ by {diff:.2e}")
    return diff


def training_pass(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
    return lambda: timed(step)


def _inputs(batch: int, size: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, size, size, generator=g),
            torch.randint(0, classes, (batch,), generator=g))


def run(tiny: bool = False, repeats: int | None = None) -> Report:
    cfg = dict(TINY if tiny else NORMAL)
    if repeats:
        cfg["repeats"] = repeats
        cfg["cifar_pair_repeats"] = 3 * repeats if cfg["cifar_pair_repeats"] else None
    with torch_threads(cfg["threads"]):
        return _run(cfg, tiny)


def _run(cfg: dict, tiny: bool) -> Report:
    import torchvision

    reps, warm = cfg["repeats"], cfg["warmup"]
    torch.manual_seed(0)
    inet, cifar = cfg["imagenet"], cfg["cifar"]
    report = Report("model", tiny, {**cfg, "device": "cpu",
                                    "pass": "forward + cross-entropy + backward, float32"})

    ours = create_model("resnext50_32x4d")
    theirs = torchvision.models.resnext50_32x4d()
    diff = check_same_network(ours, theirs, inet["size"])
    images, labels = _inputs(inet["batch"], inet["size"], 1000)
    values = interleave({"ours_50_32x4d": training_pass(ours, images, labels),
                         "torchvision_50_32x4d": training_pass(theirs, images, labels)},
                        reps, warm)
    macs = complexity(ours, inet["size"])["macs"]
    for name, vals in values.items():
        report.measure(name, vals, "s/pass", warm, lower_is_better=True, macs_per_image=macs,
                       max_logit_diff=diff)
    report.ratio("ours / torchvision (ResNeXt-50 32x4d)", "ours_50_32x4d",
                 "torchvision_50_32x4d", ("<=", 1.02), why="time: lower is better")
    del ours, theirs

    args = {k: cifar[k] for k in ("depth", "cardinality", "bottleneck_width")}
    ours_c = create_model("resnext29_8x64d", **args)
    theirs = torchvision_cifar_resnext(**args)
    diff = check_same_network(ours_c, theirs, cifar["size"])
    ours_a, ours_b = convert_form(ours_c, "a"), convert_form(ours_c, "b")
    images, labels = _inputs(cifar["batch"], cifar["size"], 10, seed=1)
    # Two interleaves, so each pair of contenders alternates only with itself, as the
    # ImageNet pair does: with all four in one, (c) and torchvision followed different
    # contenders (form (a) makes thousands of small tensors) and their pairs scattered 0.95-1.14.
    # Its activations (32 x 32 maps) outgrow the caches, so other jobs' memory traffic makes
    # these pairs scatter more than the ImageNet pair's; its passes are short: take 3x as many.
    values = interleave({"ours_cifar_c": training_pass(ours_c, images, labels),
                         "torchvision_cifar": training_pass(theirs, images, labels)},
                        cfg["cifar_pair_repeats"] or reps, warm)
    values.update(interleave({"form_c": training_pass(ours_c, images, labels),
                              "form_a": training_pass(ours_a, images, labels),
                              "form_b": training_pass(ours_b, images, labels)}, reps, warm))
    macs = complexity(ours_c, cifar["size"])["macs"]
    for name, vals in values.items():
        report.measure(name, vals, "s/pass", warm, lower_is_better=True, macs_per_image=macs,
                       **({"max_logit_diff": diff} if name == "torchvision_cifar" else {}))
    label = f"ResNeXt-{args['depth']} {args['cardinality']}x{args['bottleneck_width']}d"
    report.ratio(f"ours / torchvision ({label})", "ours_cifar_c", "torchvision_cifar",
                 ("<=", 1.02), why="time: lower is better")
    for form in ("a", "b"):
        report.ratio(f"form ({form}) / form (c) ({label})", f"form_{form}", "form_c",
                     (">=", 1.0), why="time; the paper: (c) is the fastest form")
    return report
