"""The model zoo: every registered network trains, and form (c) is torchvision's network."""

import pytest
import torch
import torchvision

from resnext_lit.models import (ResNeXt, complexity, create_model, list_models, model_config,
                                model_entry)

TORCHVISION_SHARED = ("resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                      "resnext101_32x8d", "resnext101_64x4d")


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"parameters without gradient: {missing[:5]}"


def _meta_state(model_fn):
    with torch.device("meta"):
        return {k: v.shape for k, v in model_fn().state_dict().items()}


@pytest.mark.parametrize("name", TORCHVISION_SHARED)
def test_same_parameters_as_torchvision(name):
    ours = _meta_state(lambda: create_model(name))
    theirs = _meta_state(getattr(torchvision.models, name))
    assert ours == theirs  # same names and shapes: what `load_state_dict(strict=True)` checks
    with torch.device("meta"):
        n_ours = sum(p.numel() for p in create_model(name).parameters())
        n_theirs = sum(p.numel() for p in getattr(torchvision.models, name)().parameters())
    assert n_ours == n_theirs


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_torchvision_checkpoint_loads_strict_and_gives_same_logits(name):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)().eval()
    for m in theirs.modules():  # non-trivial BN statistics, so a mix-up would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    ours = create_model(name).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_zero_init_residual_zeroes_last_bn():
    model = create_model("resnext29_2x64d", zero_init_residual=True, bottleneck_width=4)
    gammas = [b.bn3.weight for b in model.modules() if hasattr(b, "bn3")]
    assert gammas and all((g == 0).all() for g in gammas)
    model = create_model("resnext29_2x64d", bottleneck_width=4)
    assert all((b.bn3.weight == 1).all() for b in model.modules() if hasattr(b, "bn3"))


def test_overrides_apply_to_any_name():
    config = model_config("resnet50", cardinality=8, bottleneck_width=14, depth=101,
                          num_classes=7, form="b")
    assert config == dict(layers=(3, 4, 23, 3), stem="imagenet", cardinality=8,
                          bottleneck_width=14, num_classes=7, form="b")
    assert model_config("resnext29_8x64d")["num_classes"] == 10  # CIFAR-10 by default


@pytest.mark.parametrize("call, message", [
    (lambda: create_model("resnext50_32x4", num_classes=3), "closest: resnext50_32x4d"),
    (lambda: create_model("resnet50", cardinality=0), "cardinality"),
    (lambda: create_model("resnet50", bottleneck_width=-1), "bottleneck_width"),
    (lambda: create_model("resnet50", form="d"), "form must be one of a, b, c"),
    (lambda: create_model("resnet50", depth=34), "depth must be one of 11, 29, 50, 101, 152, 200"),
    (lambda: create_model("resnet50", num_classes=0), "num_classes"),
    (lambda: create_model("resnet50", width=3), "unknown model override 'width'"),
    (lambda: ResNeXt(layers=(3, 0, 2)), "layers"),
    (lambda: ResNeXt(stem="tiny"), "stem"),
])
def test_bad_input_is_one_clear_line(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_duplicate_registration_raises():
    from resnext_lit.models.registry import register
    with pytest.raises(ValueError, match="registered twice"):
        register("resnet50", 50, 1, 64)


def test_model_entry_keeps_paper_figures():
    assert model_entry("resnext101_64x4d")["paper"]["top1_err"] == 20.4
    assert model_entry("resnext29_16x64d")["paper"]["cifar100_err"] == 17.31


def test_complexity_counts_real_model_like_meta_model():
    real = create_model("resnext29_2x64d", bottleneck_width=8)
    with torch.device("meta"):
        meta = create_model("resnext29_2x64d", bottleneck_width=8)
    assert complexity(real, 32) == complexity(meta, 32)
    assert real.training  # counting must not leave the model in eval mode
