"""BlurPool as a model option: ffcv-imagenet's placement, unchanged checkpoints, the blur itself."""

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from resnext_lit.models import (
    BlurConv2d,
    ResNeXt,
    complexity,
    convert_form,
    create_model,
    model_config,
)


def _meta(fn):
    with torch.device("meta"):
        return fn()


def _blurred(net):
    return {name for name, m in net.named_modules() if isinstance(m, BlurConv2d)}


def test_blurpool_hits_every_strided_conv_with_16_inputs_and_counts_its_macs():
    net = _meta(lambda: create_model("resnext50_32x4d", blurpool=True))
    ruled = {name for name, m in net.named_modules() if isinstance(m, nn.Conv2d)
             and max(m.stride) > 1 and m.in_channels >= 16}
    assert _blurred(net) == ruled
    assert ruled == {f"layer{i}.0.{conv}" for i in (2, 3, 4) for conv in ("conv2", "downsample.0")}
    assert net.conv1.stride == (2, 2) and "conv1" not in _blurred(net)  # the 3-channel stem
    assert not _blurred(_meta(lambda: create_model("resnext50_32x4d")))  # off by default
    # flop_counter sees each blur as a depthwise 3x3 conv at its input's resolution (224 px).
    blur_macs = 9 * 2 * (256 * 56**2 + 512 * 28**2 + 1024 * 14**2)
    plain = complexity(_meta(lambda: create_model("resnext50_32x4d")), 224)
    assert complexity(net, 224) == {"params": plain["params"], "macs": plain["macs"] + blur_macs}


def test_blurpool_keeps_state_dict_keys_and_torchvision_loads_strict():
    ours = _meta(lambda: create_model("resnext50_32x4d", blurpool=True))
    plain = _meta(lambda: create_model("resnext50_32x4d"))
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in plain.state_dict().items()}
    theirs = _meta(torchvision.models.resnext50_32x4d)
    ours.load_state_dict(theirs.state_dict(), strict=True)  # keys and shapes, on meta tensors


def test_blur_conv_is_the_conv_of_a_depthwise_binomial_blur():
    torch.manual_seed(0)
    conv = BlurConv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False)
    x = torch.randn(2, 4, 9, 9)
    binomial = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    blurred = F.conv2d(x, binomial.repeat(4, 1, 1, 1), padding=1, groups=4)
    expected = F.conv2d(blurred, conv.weight, stride=2, padding=1, groups=2)
    torch.testing.assert_close(conv(x), expected)


def test_blurpool_survives_rebuild_form_conversion_and_channels_last():
    torch.manual_seed(0)
    net = create_model("resnext29_2x64d", depth=11, bottleneck_width=4, blurpool=True).eval()
    assert model_config("resnext29_2x64d", blurpool=True)["blurpool"] is True
    rebuilt = ResNeXt(**net.config)
    assert rebuilt.config == net.config and _blurred(rebuilt) == _blurred(net) != set()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        for form in ("a", "b"):  # the blur is depthwise: the forms stay one function
            torch.testing.assert_close(convert_form(net, form).eval()(x), out)
        rebuilt.load_state_dict(net.state_dict(), strict=True)
        rebuilt = rebuilt.eval().to(memory_format=torch.channels_last)
        torch.testing.assert_close(rebuilt(x.to(memory_format=torch.channels_last)), out)
