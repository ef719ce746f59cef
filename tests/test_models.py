"""The model zoo: every registered network trains, and form (c) is torchvision's network."""

import pytest
import torch
import torchvision

from resnext_lit.models import (
    ResNeXt,
    complexity,
    create_model,
    list_models,
    model_config,
    model_entry,
    registered_name,
)

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
    """Our own registry's mistakes are bugs (a traceback), not a user's bad input (one line)."""
    from resnext_lit.errors import UserError
    from resnext_lit.models.registry import RegistryError, register
    assert not issubclass(RegistryError, UserError)
    with pytest.raises(RegistryError, match="registered twice"):
        register("resnet50", 50, 1, 64)
    with pytest.raises(RegistryError, match="registered twice"):
        register("resnext29_99x1d", 29, 99, 1, aliases=("resnext50_32x4d",))
    # one network, one entry: a second name for it is an alias
    with pytest.raises(RegistryError, match="is the network resnext50_32x4d .* as an alias"):
        register("resnext50_32x4d_again", 50, 32, 4)
    with pytest.raises(RegistryError, match="not in the paper but has paper figures"):
        register("resnext29_99x1d", 29, 99, 1, in_paper=False, top1_err=1.0)
    assert "resnext29_99x1d" not in list_models()


def test_aliases_are_the_same_entry_and_never_listed():
    for alias, name in (("resnet50", "resnext50_1x64d"), ("resnet101", "resnext101_1x64d")):
        assert model_entry(alias) is model_entry(name)
        assert alias in model_entry(name)["aliases"] and alias not in list_models()
        assert model_config(alias) == model_config(name)
        entry = model_entry(alias)
        assert registered_name(entry["depth"], entry["cardinality"],
                               entry["bottleneck_width"]) == name
    # Table 1's exact size and Table 3's error of ResNet-50 sit in one entry
    assert model_entry("resnet50")["paper"] == dict(top1_err=23.9, gmacs=4.1, params_m=25.5)
    assert model_entry("resnet50")["tables"] == ("Table 1", "Table 3")
    with pytest.raises(ValueError, match="closest: resnet50"):
        model_entry("resnet5")


@pytest.mark.parametrize("name", list_models())
def test_every_entry_states_its_data_and_native_resolution(name):
    entry = model_entry(name)
    stem = model_config(name)["stem"]
    assert (entry["dataset"], entry["image_size"]) in (
        {"imagenet": [("imagenet", 224)], "cifar": [("cifar", 32), ("digits", 16)]}[stem])
    # in the paper <=> in one of its tables; figures only for networks of the paper
    assert entry["in_paper"] == bool(entry["tables"])
    assert entry["in_paper"] or not entry["paper"]


def test_the_demo_networks_are_registered_and_not_the_papers():
    for c in (1, 2, 4, 8):
        entry = model_entry(f"resnext11_{c}x4d")
        assert (entry["depth"], entry["cardinality"], entry["bottleneck_width"]) == (11, c, 4)
        assert entry["dataset"] == "digits" and not entry["in_paper"] and not entry["paper"]
    # the old way to the demo (8x64d overridden to 11 layers, d=4) builds the same network
    assert registered_name(11, 8, 4) == "resnext11_8x4d"
    assert model_config("resnext29_8x64d", depth=11, bottleneck_width=4) == \
        model_config("resnext11_8x4d")


def test_bad_arguments_are_checked_once_before_any_module_is_built(monkeypatch):
    from resnext_lit.models import resnext

    def built(*args, **kwargs):
        raise AssertionError("a module was built before the arguments were checked")
    monkeypatch.setattr(resnext.nn.Conv2d, "__init__", built)
    monkeypatch.setattr(resnext.nn.BatchNorm2d, "__init__", built)
    for kwargs, message in ((dict(cardinality=0), "cardinality must be an integer >= 1, got 0"),
                            (dict(bottleneck_width=0), "bottleneck_width must be"),
                            (dict(form="d"), "form must be one of a, b, c, got 'd'"),
                            (dict(num_classes=0), "num_classes must be")):
        with pytest.raises(ValueError, match=message):
            ResNeXt(**kwargs)
        with pytest.raises(ValueError, match=message):
            model_config("resnext50_32x4d", **kwargs)  # the CLI's check: nothing built


def test_model_entry_keeps_paper_figures():
    assert model_entry("resnext101_64x4d")["paper"]["top1_err"] == 20.4
    assert model_entry("resnext29_16x64d")["paper"]["cifar100_err"] == 17.31


def test_complexity_counts_real_model_like_meta_model():
    real = create_model("resnext29_2x64d", bottleneck_width=8)
    with torch.device("meta"):
        meta = create_model("resnext29_2x64d", bottleneck_width=8)
    assert complexity(real, 32) == complexity(meta, 32)
    assert real.training  # counting must not leave the model in eval mode
