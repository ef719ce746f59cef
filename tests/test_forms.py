"""Forms (a), (b), (c) are the same function (paper Sec. 3.3): in eval AND in train mode."""

import pytest
import torch

from resnext_lit.models import convert_form, create_model

SETTINGS = [(2, 4), (4, 2), (8, 1), (3, 5)]  # (C, d), small so the C-path forms stay fast


def _randomise_bn(model):
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def _bn_buffers(model):
    return sorted(torch.cat([b.flatten() for n, b in model.named_buffers()
                             if "running" in n]).tolist())


@pytest.mark.parametrize("cardinality, width", SETTINGS)
@pytest.mark.parametrize("form", ["a", "b"])
@pytest.mark.parametrize("train", [False, True])
def test_forms_are_equivalent(cardinality, width, form, train):
    torch.manual_seed(0)
    c = create_model("resnext29_2x64d", cardinality=cardinality, bottleneck_width=width,
                     num_classes=7)
    _randomise_bn(c)
    c.train(train)
    other = convert_form(c, form)
    assert other.training == train
    assert all(getattr(b, "form", form) == form for b in other.modules() if hasattr(b, "form"))
    x = torch.randn(4, 3, 16, 16)
    out_c, out_other = c(x), other(x)
    torch.testing.assert_close(out_other, out_c, rtol=1e-4, atol=1e-5)
    if train:  # BN batch statistics were updated identically, path by path
        torch.testing.assert_close(_bn_buffers(other), _bn_buffers(c), rtol=1e-4, atol=1e-6)
        out_c.square().mean().backward()
        out_other.square().mean().backward()
        torch.testing.assert_close(other.fc.weight.grad, c.fc.weight.grad, rtol=1e-4, atol=1e-6)
    back = convert_form(other, "c")  # and back again, to the same weights
    for (k, v), (k2, v2) in zip(c.state_dict().items(), back.state_dict().items()):
        assert k == k2
        # In train mode the running statistics were computed path by path vs grouped: equal up
        # to float rounding, as checked above (the weights themselves are copied exactly).
        tolerance = dict(rtol=1e-4, atol=1e-6) if train and "running" in k else {}
        torch.testing.assert_close(v2, v, **tolerance)


def test_form_a_and_b_on_imagenet_stem():
    torch.manual_seed(0)
    c = create_model("resnext50_32x4d", cardinality=4, bottleneck_width=2, num_classes=3).eval()
    _randomise_bn(c)
    x = torch.randn(2, 3, 32, 32)
    for form in "ab":
        torch.testing.assert_close(convert_form(c, form)(x), c(x), rtol=1e-4, atol=1e-5)


def test_convert_rejects_unknown_form():
    with pytest.raises(ValueError, match="form must be one of a, b, c"):
        convert_form(create_model("resnext29_1x64d", bottleneck_width=2), "x")
