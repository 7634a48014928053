"""ResNet v1 (He et al., 2015), ResNet v2 (pre-activation, He et al., 2016) and ResNeXt (Xie et al., 2017),
from one builder: a table of stages plus a bottleneck block with a pre-activation flag, a bias flag,
a group count and the place of the stride.

Module paths follow Keras layer names: ``conv3_block2_1_conv`` is ``conv3.block2.conv1``, ``..._0_bn``
(the projection shortcut) ``bn0``, ``..._preact_bn`` ``preact_bn``; the stem is ``conv1.conv``/``conv1.bn``
and v2 ends with ``post_bn``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Conv2d, batch_norm
from ..registry import register_model
from .base import ConvNet


@dataclass(frozen=True)
class Stage:
    """One row of the table: ``blocks`` bottlenecks of inner width ``width`` and ``out`` output channels."""

    blocks: int
    width: int
    out: int
    stride: int


def imagenet_stages(depths: tuple[int, ...], width_mult: int = 1, base: int = 64) -> tuple[Stage, ...]:
    """The four ImageNet stages (``conv2`` .. ``conv5``): inner widths base·2^i·width_mult, outputs 4·base·2^i."""
    return tuple(Stage(n, base * 2**i * width_mult, 4 * base * 2**i, 1 if i == 0 else 2) for i, n in enumerate(depths))


DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def cifar_resnext_stages(cardinality: int, bottleneck_width: int) -> tuple[Stage, ...]:
    """ResNeXt-29 for CIFAR (3 stages of 3 blocks, outputs 256/512/1024, as in the paper)."""
    return tuple(Stage(3, cardinality * bottleneck_width * 2**i, 256 * 2**i, 1 if i == 0 else 2) for i in range(3))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped for ResNeXt) -> 1x1, with a projection (``conv0``/``bn0``) when the shape changes.

    v1 (``preact=False``): BN after each conv, ReLU after the sum. v2 (``preact=True``): BN+ReLU before the
    block (``preact_bn``), the shortcut taken from there, no BN after the last conv; an identity shortcut
    with stride is a 1x1 max-pool (as Keras does).
    """

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int, *, preact: bool, bias: bool,
                 groups: int, stride_on_3x3: bool, bn_eps: float, bn_momentum: float) -> None:
        super().__init__()
        self.preact, self.stride = preact, stride
        s1, s3 = (1, stride) if stride_on_3x3 or preact else (stride, 1)
        if preact:
            self.preact_bn = batch_norm(in_channels, bn_eps, bn_momentum)
        self.has_projection = in_channels != out_channels
        if self.has_projection:
            self.conv0 = Conv2d(in_channels, out_channels, 1, stride, bias=bias or preact)
            if not preact:
                self.bn0 = batch_norm(out_channels, bn_eps, bn_momentum)
        inner_bias = bias and not preact
        self.conv1 = Conv2d(in_channels, width, 1, s1, bias=inner_bias)
        self.bn1 = batch_norm(width, bn_eps, bn_momentum)
        self.conv2 = Conv2d(width, width, 3, s3, 1, groups=groups, bias=inner_bias)
        self.bn2 = batch_norm(width, bn_eps, bn_momentum)
        self.conv3 = Conv2d(width, out_channels, 1, bias=bias or preact)
        if not preact:
            self.bn3 = batch_norm(out_channels, bn_eps, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            pre = F.relu(self.preact_bn(x))
            if self.has_projection:
                shortcut = self.conv0(pre)
            else:
                shortcut = F.max_pool2d(x, 1, self.stride) if self.stride > 1 else x
            x = pre
        else:
            shortcut = self.bn0(self.conv0(x)) if self.has_projection else x
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.conv3(x)
        if self.preact:
            return x + shortcut
        return F.relu(self.bn3(x) + shortcut)


class Stack(nn.Sequential):
    """The blocks of one stage, named ``block1`` .. ``blockN`` as in Keras."""


class Stem(nn.Module):
    """``conv1``: the first convolution (7x7/2 for ImageNet, 3x3/1 for CIFAR), BN+ReLU except in v2."""

    def __init__(self, in_chans: int, out: int, kernel: int, stride: int, *, bn: bool, bias: bool,
                 bn_eps: float, bn_momentum: float) -> None:
        super().__init__()
        self.conv = Conv2d(in_chans, out, kernel, stride, kernel // 2, bias=bias)
        self.bn = batch_norm(out, bn_eps, bn_momentum) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = F.relu(self.bn(x))
        return x


class Pool1(nn.Module):
    """``pool1``: zero padding then a 3x3/2 max-pool (zero, not -inf, padding: v2 pools before any ReLU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)


class PostNorm(nn.Module):
    """v2's final BN + ReLU (``post_bn``)."""

    def __init__(self, channels: int, bn_eps: float, bn_momentum: float) -> None:
        super().__init__()
        self.bn = batch_norm(channels, bn_eps, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(x))


class ResNet(ConvNet):
    """ResNet / ResNetV2 / ResNeXt from a stage table.

    ``preact``: v2 (stride on the last block of a stage, as Keras' ``ResNet50V2``); ``bias``: conv biases
    (Keras v1 and v2); ``groups`` > 1: ResNeXt; ``stride_on_3x3``: torchvision's "v1.5" (Keras v1 strides
    the first 1x1); ``stem='cifar'``: a 3x3/1 stem conv and no max-pool.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, global_pool: str = "avg", drop_rate: float = 0.0,
                 *, stages: tuple[Stage, ...] = imagenet_stages(DEPTHS[50]), preact: bool = False, bias: bool = False,
                 groups: int = 1, stride_on_3x3: bool = True, stem: str = "imagenet", stem_width: int = 64,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        imagenet = stem == "imagenet"
        self.conv1 = Stem(in_chans, stem_width, 7 if imagenet else 3, 2 if imagenet else 1,
                          bn=not preact, bias=bias, **bn)
        self.stage_names = ["conv1"]
        reduction = 2 if imagenet else 1
        self.feature_info = [dict(module="conv1", num_chs=stem_width, reduction=reduction)]
        if imagenet:
            self.pool1 = Pool1()
            self.stage_names.append("pool1")
            reduction *= 2
        c = stem_width
        for i, st in enumerate(stages):
            blocks = OrderedDict()
            for b in range(st.blocks):
                if preact:
                    stride = st.stride if b == st.blocks - 1 else 1
                else:
                    stride = st.stride if b == 0 else 1
                blocks[f"block{b + 1}"] = Bottleneck(c, st.width, st.out, stride, preact=preact, bias=bias,
                                                     groups=groups, stride_on_3x3=stride_on_3x3, **bn)
                c = st.out
            name = f"conv{i + 2}"
            self.add_module(name, Stack(blocks))
            self.stage_names.append(name)
            reduction *= st.stride
            self.feature_info.append(dict(module=name, num_chs=c, reduction=reduction))
        if preact:
            self.post_bn = PostNorm(c, **bn)
            self.stage_names.append("post_bn")
            self.feature_info[-1]["module"] = "post_bn"
        self.min_size = 32
        self._init_head(c, num_classes, global_pool, drop_rate, in_chans)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _register(name: str, reference: str, preprocessing: str, **kwargs) -> None:
    cifar = kwargs.get("stem") == "cifar"
    register_model(name, ResNet, family="resnet", reference=reference, preprocessing=preprocessing,
                   input_size=(3, 32, 32) if cifar else (3, 224, 224), min_input_size=(3, 32, 32),
                   num_classes=10 if cifar else 1000, crop_pct=1.0 if cifar else 0.875,
                   first_conv="conv1.conv", classifier="fc", kwargs=kwargs)


KERAS_BN = dict(bn_eps=1.001e-5, bn_momentum=0.01)
for depth in (50, 101, 152):
    _register(f"resnet{depth}", f"keras.applications.ResNet{depth}", "caffe",
              stages=imagenet_stages(DEPTHS[depth]), bias=True, stride_on_3x3=False, **KERAS_BN)
    v2 = imagenet_stages(DEPTHS[depth])
    v2 = tuple(Stage(s.blocks, s.width, s.out, 2 if i < 3 else 1) for i, s in enumerate(v2))
    _register(f"resnet{depth}v2", f"keras.applications.ResNet{depth}V2", "tf", stages=v2, preact=True, bias=True,
              **KERAS_BN)
for depth, card, width in ((50, 32, 4), (101, 32, 4), (101, 32, 8)):
    _register(f"resnext{depth}_{card}x{width}d", f"torchvision/timm resnext{depth}_{card}x{width}d", "torch",
              stages=imagenet_stages(DEPTHS[depth], width_mult=card * width // 64), groups=card)
for card, width in ((8, 64), (2, 64), (32, 4)):
    _register(f"resnext29_{card}x{width}d", "ResNeXt paper, CIFAR (Xie et al., 2017)", "cifar",
              stages=cifar_resnext_stages(card, width), groups=card, stem="cifar")
