"""The ResNeXt network: one bottleneck block in the paper's three equivalent forms.

Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017,
arXiv:1611.05431. Build models by name with `resnext_lit.models.create_model`; this file holds
the architecture itself.

    >>> net = ResNeXt(layers=(3, 4, 6, 3), cardinality=32, bottleneck_width=4)  # ResNeXt-50 32x4d

Form (c) keeps torchvision's parameter names (`layer1.0.conv2.weight`, ...), so torchvision's
`resnet50` / `resnext50_32x4d` checkpoints load with `strict=True`, with or without `blurpool`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

FORMS = ("a", "b", "c")
STEMS = ("imagenet", "cifar")
EXPANSION = 4  # a bottleneck's output has 4x its `planes` channels (paper Table 1)


def group_width(planes: int, cardinality: int, bottleneck_width: int) -> int:
    """Channels of a stage's grouped 3x3 conv: floor(planes * d / 64) * C.

    The paper (Sec. 3.3, Table 1) fixes d for the first stage (planes = 64) and doubles it at
    every downsampling; the official code (facebookresearch/ResNeXt) and torchvision floor the
    per-path width, e.g. ResNeXt-50 32x4d -> 128, 256, 512, 1024 (Table 1, Table 2's C*d row).
    """
    return (planes * bottleneck_width // 64) * cardinality


def check_args(layers, cardinality: int, bottleneck_width: int, form: str = "c",
               num_classes: int = 1000, stem: str = "imagenet", zero_init_residual: bool = False,
               blurpool: bool = False) -> None:
    """One-line `UserError`s for `ResNeXt`'s arguments (the same signature), raised before any
    module is built: the one check, run by `ResNeXt` and by `models.model_config`."""
    if not isinstance(cardinality, int) or cardinality < 1:
        raise UserError(f"cardinality must be an integer >= 1, got {cardinality!r}")
    if not isinstance(bottleneck_width, int) or bottleneck_width < 1:
        raise UserError(f"bottleneck_width must be an integer >= 1, got {bottleneck_width!r}")
    if form not in FORMS:
        raise UserError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if stem not in STEMS:
        raise UserError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
    layers = tuple(layers)
    if not layers or any(not isinstance(n, int) or n < 1 for n in layers):
        raise UserError(f"layers must be positive block counts per stage, got {layers!r}")


def blurs(in_channels: int, stride: int) -> bool:
    """BlurPool's placement: blur the input of every conv with stride > 1 and >= 16 input channels.

    This is ffcv-imagenet's rule (libffcv/ffcv-imagenet `train_imagenet.py`, `use_blurpool: 1`,
    after Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019): in a ResNet
    it hits each stage's strided 3x3 conv and 1x1 shortcut conv, never the 7x7 stem (3 channels).
    Forms (a) and (b) ask it about the block's grouped width C * d, not a path's d: the blur is
    depthwise, so blurring every path's input is blurring the grouped conv's input, and the
    three forms stay one function (`convert_form`).
    """
    return stride > 1 and in_channels >= 16


class BlurConv2d(nn.Conv2d):
    """An `nn.Conv2d` that first blurs its input with the 3x3 binomial filter [1,2,1]^T[1,2,1]/16.

    The blur is ffcv-imagenet's (see `blurs`): depthwise, stride 1, zero padding 1, then the
    strided conv runs unchanged. Zhang (2019, Fig. 2) instead runs the conv at stride 1, then
    ReLU, blur and subsample; blurring first costs far less. The filter is a fixed, non-persistent
    buffer, so parameters and `state_dict` keys are exactly `nn.Conv2d`'s (checkpoints load as is).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        row = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(row, row) / 16
        self.register_buffer("blur_filter", kernel.expand(self.in_channels, 1, 3, 3).clone(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.conv2d(x, self.blur_filter, padding=1, groups=self.in_channels))

    def extra_repr(self) -> str:
        return super().extra_repr() + ", blurpool=True"


def conv1x1(cin: int, cout: int, stride: int = 1, blur: bool = False) -> nn.Conv2d:
    return (BlurConv2d if blur else nn.Conv2d)(cin, cout, 1, stride=stride, bias=False)


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1,
            blur: bool = False) -> nn.Conv2d:
    return (BlurConv2d if blur else nn.Conv2d)(cin, cout, 3, stride=stride, padding=1,
                                               groups=groups, bias=False)


class Transformation(nn.Module):
    """One transformation T_i of paper Eq. 2: one of the C low-dimensional paths of forms (a)
    and (b) (Fig. 3), 1x1 -> 3x3. A block keeps them in `paths` (the state dict's key).

    Form (a) ends each path with its own 1x1 projection back to the block's output width
    (`conv3`), without BN: the paper puts one BN after the aggregation (footnote 6).
    """

    def __init__(self, inplanes: int, d: int, stride: int, outplanes: int | None,
                 blur: bool = False):
        super().__init__()
        self.conv1, self.bn1 = conv1x1(inplanes, d), nn.BatchNorm2d(d)
        self.conv2, self.bn2 = conv3x3(d, d, stride, blur=blur), nn.BatchNorm2d(d)
        self.conv3 = conv1x1(d, outplanes) if outplanes else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.conv3(x) if self.conv3 is not None else x


class Bottleneck(nn.Module):
    """The aggregated residual transformation y = x + sum_i T_i(x) (paper Eq. 3).

    form "c": one grouped 3x3 conv with `cardinality` groups (Fig. 3c; the fast form).
    form "b": C paths 1x1 -> 3x3, concatenated, then one 1x1 (Fig. 3b, Inception-like).
    form "a": C paths 1x1 -> 3x3 -> 1x1, summed, BN after the sum (Fig. 3a, footnote 6).
    All three compute the same function for matching weights (Sec. 3.3; see `convert_form`).
    Downsampling strides the 3x3 conv, as in the paper's released code and torchvision;
    `blurpool` blurs that conv's input where `blurs` says so. `ResNeXt` checks the arguments
    (`check_args`) once for all its blocks.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, cardinality: int = 1,
                 bottleneck_width: int = 64, form: str = "c", downsample: nn.Module | None = None,
                 blurpool: bool = False):
        super().__init__()
        width, outplanes = group_width(planes, cardinality, bottleneck_width), planes * EXPANSION
        if width == 0:
            raise UserError(f"bottleneck_width={bottleneck_width} is too small: "
                            f"floor({planes} * d / 64) is 0 at planes={planes}")
        self.form, self.cardinality = form, cardinality
        blur = blurpool and blurs(width, stride)  # judged on C * d in every form (see `blurs`)
        if form == "c":
            self.conv1, self.bn1 = conv1x1(inplanes, width), nn.BatchNorm2d(width)
            self.conv2 = conv3x3(width, width, stride, groups=cardinality, blur=blur)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = conv1x1(width, outplanes)
        else:
            d = width // cardinality
            self.paths = nn.ModuleList(
                Transformation(inplanes, d, stride, outplanes if form == "a" else None, blur)
                for _ in range(cardinality))
            if form == "b":
                self.conv3 = conv1x1(width, outplanes)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if self.form == "c":
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.conv3(out)
        elif self.form == "b":
            out = self.conv3(torch.cat([path(x) for path in self.paths], dim=1))
        else:
            out = sum(path(x) for path in self.paths)
        out = self.bn3(out)
        # ReLU after adding the shortcut, not before (paper Sec. 4, following ResNet).
        return self.relu(out + identity)


def depth_of(layers) -> int:
    """Weighted layers, as the paper counts them (Table 1): 3 per bottleneck + the stem conv + fc,
    e.g. (3, 4, 6, 3) -> 50, CIFAR's (3, 3, 3) -> 29."""
    return 3 * sum(layers) + 2


class ResNeXt(nn.Module):
    """ResNeXt (and ResNet, its C=1 case) with the ImageNet or the CIFAR stem.

    Args:
        layers: blocks per stage, e.g. (3, 4, 6, 3) for 50 layers (paper Table 1), (3, 3, 3)
            for the CIFAR ResNeXt-29 (paper Sec. 5.3).
        cardinality: C, the number of paths (groups of the 3x3 conv).
        bottleneck_width: d, channels per path in the first stage; it doubles per stage.
        form: "a", "b" or "c", the paper's three equivalent block forms (Fig. 3).
        num_classes: outputs of the final fully connected layer.
        stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (one 3x3 conv, 64 filters).
        zero_init_residual: start each block's last BN at gamma = 0 so every block begins as the
            identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec. 5.1).
        blurpool: blur the input of every strided conv with >= 16 input channels by a fixed 3x3
            binomial filter (`blurs`, `BlurConv2d`: ffcv-imagenet's recipe, after Zhang 2019).
            Off in the paper's recipes; parameters and `state_dict` keys do not change.
    """

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), cardinality: int = 1,
                 bottleneck_width: int = 64, form: str = "c", num_classes: int = 1000,
                 stem: str = "imagenet", zero_init_residual: bool = False,
                 blurpool: bool = False):
        layers = tuple(layers)
        check_args(layers, cardinality, bottleneck_width, form, num_classes, stem)
        super().__init__()
        self.config = dict(layers=layers, cardinality=cardinality,
                           bottleneck_width=bottleneck_width, form=form, num_classes=num_classes,
                           stem=stem, zero_init_residual=zero_init_residual, blurpool=blurpool)
        self.inplanes = 64
        if stem == "imagenet":  # 3 input channels: `blurs` leaves the stem alone
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(3, 64)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        for i, blocks in enumerate(layers):
            stage = self._make_stage(64 * 2**i, blocks, 1 if i == 0 else 2,
                                     cardinality, bottleneck_width, form, blurpool)
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)
        self._init_weights(zero_init_residual)

    @property
    def depth(self) -> int:
        """The paper's depth of this network (`depth_of`)."""
        return depth_of(self.config["layers"])

    def _make_stage(self, planes: int, blocks: int, stride: int, cardinality: int,
                    bottleneck_width: int, form: str, blurpool: bool) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * EXPANSION:
            # Projection shortcut only where the shape changes (paper Sec. 4, ResNet option B).
            blur = blurpool and blurs(self.inplanes, stride)
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * EXPANSION, stride, blur),
                                       nn.BatchNorm2d(planes * EXPANSION))
        stage = [Bottleneck(self.inplanes, planes, stride, cardinality, bottleneck_width, form,
                            downsample, blurpool)]
        self.inplanes = planes * EXPANSION
        stage += [Bottleneck(self.inplanes, planes, 1, cardinality, bottleneck_width, form)
                  for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 (fan_out, ReLU), as fb.resnet.torch, which the paper follows.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))
