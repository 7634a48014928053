"""ResNet v1 (He et al., 2015), ResNet v2 (pre-activation, He et al., 2016) and ResNeXt (Xie et al., 2017),
from one builder: a table of stages plus a bottleneck block with a pre-activation flag, a bias flag,
a group count and the place of the stride.

Module paths follow Keras layer names: ``conv3_block2_1_conv`` is ``conv3.block2.conv1``, ``..._0_bn``
(the projection shortcut) ``bn0``, ``..._preact_bn`` ``preact_bn``; the stem is ``conv1.conv``/``conv1.bn``
and v2 ends with ``post_bn``.
"""

from __future__ import annotations

import inspect
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Conv2d, batch_norm
from .base import ConvNet
from .published import keras_pair, keras_parity, torch_parity, torchvision_record
from .spec import Family, KerasMapping, KeyLayout, ModelCfg, Placement, TorchMapping


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

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """``convK``/``bnK`` wherever the BatchNorm follows the conv (v2 has no ``bn0`` and ``bn3``)."""
        return [(f"conv{k}", f"bn{k}") for k in range(4) if hasattr(self, f"bn{k}")]

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
                 groups: int = 1, stride_on_3x3: bool = True, stem: Literal["imagenet", "cifar"] = "imagenet",
                 stem_width: int = 64, bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
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
        self._init_head(c, num_classes, global_pool, drop_rate, in_chans)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stage_groups(self) -> dict[str, str]:
        """The stem (``conv1``, ``pool1``), then one group per stage of the table (v2's ``post_bn`` closes the
        last one)."""
        groups, last = {}, "stem"
        for name in self.stage_names:
            if isinstance(getattr(self, name), Stack):
                last = name
            groups[name] = last
        return groups

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """The stem's conv and BN (v1), and each bottleneck's ``convK``/``bnK``."""
        pairs = [("conv1.conv", "conv1.bn")] if self.conv1.bn is not None else []
        for stage in self.stage_names:
            if isinstance(getattr(self, stage), Stack):
                for b, block in getattr(self, stage).named_children():
                    pairs += [(f"{stage}.{b}.{c}", f"{stage}.{b}.{n}") for c, n in block.conv_bn_pairs()]
        return pairs


@dataclass(frozen=True)
class Arch:
    """What a weight file tells of a ResNet row: blocks per stage, the first 3x3's width and groups, whether it
    is v2 (pre-activation), whether the stem conv has a bias, and the stem's kernel size."""

    depths: tuple[int, ...]
    width: int
    groups: int
    preact: bool
    bias: bool
    stem_kernel: int


_DEFAULTS = {k: p.default for k, p in inspect.signature(ResNet.__init__).parameters.items()
             if p.default is not inspect.Parameter.empty}


def _row_arch(cfg: ModelCfg) -> Arch:
    kw = {**_DEFAULTS, **cfg.kwargs}
    stages = kw["stages"]
    return Arch(tuple(s.blocks for s in stages), stages[0].width, kw["groups"], kw["preact"], kw["bias"],
                7 if kw["stem"] == "imagenet" else 3)


def _match(arch: Arch | None) -> str | None:
    """The registered row a file's :class:`Arch` belongs to."""
    return next((cfg.name for cfg in FAMILY.models if _row_arch(cfg) == arch), None)


def _depths(names: Sequence[str], pattern: str) -> tuple[int, ...]:
    """Blocks per stage (conv2, conv3, ...) from names matching ``pattern`` (stage and block groups)."""
    blocks: dict[int, int] = {}
    for n in names:
        if m := re.fullmatch(pattern, n):
            blocks[int(m.group(1))] = max(blocks.get(int(m.group(1)), 0), int(m.group(2)))
    return tuple(blocks[s] for s in range(2, 2 + len(blocks)) if s in blocks)


# Keras: ``conv3_block2_1_conv`` is ``conv3.block2.conv1``, ``_0_`` the projection, ``_preact_bn`` v2's
# pre-activation; keras-applications' ResNeXt stores each grouped 3x3 conv as a depthwise conv
# (``_2_conv``) plus a fixed 1x1 (``_2_gconv``), folded together at import.
_KERAS_CONV = re.compile(r"conv(\d+)_block(\d+)_(\d)_(conv|bn)")
_KERAS_GCONV = re.compile(r"conv(\d+)_block(\d+)_2_gconv")
_KERAS_PREACT = re.compile(r"conv(\d+)_block(\d+)_preact_bn")
_KERAS_FIXED = {"conv1_conv": "conv1.conv", "conv1_bn": "conv1.bn", "post_bn": "post_bn.bn", "predictions": "fc"}


def _keras_place(names: Sequence[str], model: nn.Module) -> tuple[list[Placement], list[str]]:
    placed: list[Placement] = []
    unplaced: list[str] = []
    for name in names:
        if _KERAS_GCONV.fullmatch(name):
            if name.replace("_2_gconv", "_2_conv") not in names:
                unplaced.append(f"Keras '{name}' (no matching _2_conv)")
        elif name in _KERAS_FIXED:
            placed.append(Placement(name, _KERAS_FIXED[name]))
        elif m := _KERAS_CONV.fullmatch(name):
            gconv = name.replace("_2_conv", "_2_gconv")
            placed.append(Placement(name, f"conv{m.group(1)}.block{m.group(2)}.{m.group(4)}{m.group(3)}",
                                    gconv if m.group(3) == "2" and m.group(4) == "conv" and gconv in names else None))
        elif m := _KERAS_PREACT.fullmatch(name):
            placed.append(Placement(name, f"conv{m.group(1)}.block{m.group(2)}.preact_bn"))
        else:
            unplaced.append(f"Keras '{name}'")
    return placed, unplaced


def _keras_block_outputs(names: Sequence[str], model: nn.Module) -> dict[str, str]:
    """``convS_blockB_out`` is block B of stage S; v2's ``post_relu`` is ``post_bn``."""
    out = {n: f"conv{m.group(1)}.block{m.group(2)}" for n in names
           if (m := re.fullmatch(r"conv(\d+)_block(\d+)_out", n))}
    return out | ({"post_relu": "post_bn"} if "post_relu" in names else {})


def _keras_guess(shapes: Mapping[str, Sequence[tuple[int, ...]]]) -> str | None:
    """From the block names, the first 3x3 kernel (a depthwise (3, 3, width, width // groups) in ResNeXt
    files) and the stem conv's kernel and bias."""
    first, stem = shapes.get("conv2_block1_2_conv"), shapes.get("conv1_conv")
    if not first or not stem or len(first[0]) != 4:
        return None
    kh, kw, a, b = first[0]
    width, groups = (a, a // b) if a != b else (b, 1)
    preact = any(_KERAS_PREACT.fullmatch(n) for n in shapes)
    return _match(Arch(_depths(shapes, r"conv(\d+)_block(\d+)_1_conv"), width, groups, preact, len(stem) == 2,
                       stem[0][0]))


TORCHVISION_LAYOUT = "torchvision/timm resnet"


def _torchvision_key(key: str) -> str:
    """``layer1.0.conv1.weight`` -> ``conv2.block1.conv1.weight``, ``downsample.0/1`` -> ``conv0``/``bn0``,
    the stem's ``conv1``/``bn1`` -> ``conv1.conv``/``conv1.bn``."""
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", key)
    if m:
        rest = m.group(3).replace("downsample.0.", "conv0.").replace("downsample.1.", "bn0.")
        return f"conv{int(m.group(1)) + 1}.block{int(m.group(2)) + 1}.{rest}"
    head, _, tail = key.partition(".")
    return {"conv1": "conv1.conv", "bn1": "conv1.bn"}.get(head, head) + f".{tail}"


def _torch_guess(layout: str, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """From the block names, the first 3x3 conv's (width, width // groups) and the stem conv."""
    first, stem = shapes.get("conv2.block1.conv2.weight"), shapes.get("conv1.conv.weight")
    if first is None or stem is None:
        return None
    return _match(Arch(_depths(shapes, r"conv(\d+)\.block(\d+)\.conv1\.weight"), first[0], first[0] // first[1],
                       "post_bn.bn.weight" in shapes, "conv1.conv.bias" in shapes, stem[-1]))


KERAS_BN = dict(bn_eps=1.001e-5, bn_momentum=0.01)
# Keras' ResNet (v1: conv biases, stride on the first 1x1) and ResNetV2 (pre-activation, conv biases).
KERAS_V1 = dict(bias=True, stride_on_3x3=False, **KERAS_BN)
KERAS_V2 = dict(preact=True, bias=True, **KERAS_BN)
_IMAGENET = dict(input_size=(3, 224, 224), first_conv="conv1.conv")
_KERAS = dict(exact=("keras",), **_IMAGENET)
_CIFAR = dict(input_size=(3, 32, 32), num_classes=10, preprocessing="cifar", crop_pct=1.0, first_conv="conv1.conv")


def _v2(stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
    """Keras' ResNetV2 strides the last block of stages 2-4 (``conv2``-``conv4``), not the first of 3-5."""
    return tuple(Stage(s.blocks, s.width, s.out, 2 if i < 3 else 1) for i, s in enumerate(stages))


FAMILY = Family(
    name="resnet",
    builder=ResNet,
    models=(
        ModelCfg("resnet50", "keras.applications.ResNet50", keras_app="ResNet50", preprocessing="caffe",
                 kwargs=dict(stages=imagenet_stages(DEPTHS[50]), **KERAS_V1), **_KERAS),
        ModelCfg("resnet50v2", "keras.applications.ResNet50V2", keras_app="ResNet50V2", preprocessing="tf",
                 kwargs=dict(stages=_v2(imagenet_stages(DEPTHS[50])), **KERAS_V2), **_KERAS),
        ModelCfg("resnet101", "keras.applications.ResNet101", keras_app="ResNet101", preprocessing="caffe",
                 kwargs=dict(stages=imagenet_stages(DEPTHS[101]), **KERAS_V1), **_KERAS),
        ModelCfg("resnet101v2", "keras.applications.ResNet101V2", keras_app="ResNet101V2", preprocessing="tf",
                 kwargs=dict(stages=_v2(imagenet_stages(DEPTHS[101])), **KERAS_V2), **_KERAS),
        ModelCfg("resnet152", "keras.applications.ResNet152", keras_app="ResNet152", preprocessing="caffe",
                 kwargs=dict(stages=imagenet_stages(DEPTHS[152]), **KERAS_V1), **_KERAS),
        ModelCfg("resnet152v2", "keras.applications.ResNet152V2", keras_app="ResNet152V2", preprocessing="tf",
                 kwargs=dict(stages=_v2(imagenet_stages(DEPTHS[152])), **KERAS_V2), **_KERAS),
        ModelCfg("resnext50_32x4d", "torchvision/timm resnext50_32x4d", torchvision_name="resnext50_32x4d",
                 timm_name="resnext50_32x4d", exact=("torchvision", "timm"),
                 kwargs=dict(stages=imagenet_stages(DEPTHS[50], width_mult=2), groups=32), **_IMAGENET),
        ModelCfg("resnext101_32x4d", "timm resnext101_32x4d", timm_name="resnext101_32x4d", exact=("timm",),
                 kwargs=dict(stages=imagenet_stages(DEPTHS[101], width_mult=2), groups=32), **_IMAGENET),
        ModelCfg("resnext101_32x8d", "torchvision/timm resnext101_32x8d", torchvision_name="resnext101_32x8d",
                 timm_name="resnext101_32x8d", exact=("torchvision", "timm"),
                 kwargs=dict(stages=imagenet_stages(DEPTHS[101], width_mult=4), groups=32), **_IMAGENET),
        ModelCfg("resnext101_64x4d", "torchvision/timm resnext101_64x4d", torchvision_name="resnext101_64x4d",
                 timm_name="resnext101_64x4d", exact=("torchvision", "timm"),
                 kwargs=dict(stages=imagenet_stages(DEPTHS[101], width_mult=4), groups=64), **_IMAGENET),
        ModelCfg("resnext29_8x64d", "ResNeXt paper, CIFAR (Xie et al., 2017)",
                 kwargs=dict(stages=cifar_resnext_stages(8, 64), groups=8, stem="cifar"), **_CIFAR),
        ModelCfg("resnext29_2x64d", "ResNeXt paper, CIFAR (Xie et al., 2017)",
                 kwargs=dict(stages=cifar_resnext_stages(2, 64), groups=2, stem="cifar"), **_CIFAR),
        ModelCfg("resnext29_32x4d", "ResNeXt paper, CIFAR (Xie et al., 2017)",
                 kwargs=dict(stages=cifar_resnext_stages(32, 4), groups=32, stem="cifar"), **_CIFAR),
    ),
    records=(
        *keras_pair("resnet50", "resnet", "resnet50", "2cb95161c43110f7111970584f804107",
                    "4d473c1dd8becc155b73f8504c6f6626", preprocessing="caffe", top1=74.9,
                    parity=keras_parity("ResNet50")),
        *keras_pair("resnet101", "resnet", "resnet101", "f1aeb4b969a6efcfb50fad2f0c20cfc5",
                    "88cf7a10940856eca736dc7b7e228a21", preprocessing="caffe", top1=76.4),
        *keras_pair("resnet152", "resnet", "resnet152", "100835be76be38e30d865e96f2aaae62",
                    "ee4c566cf9a93f14d82f913c2dc6dd0c", preprocessing="caffe", top1=76.6),
        *keras_pair("resnet50v2", "resnet", "resnet50v2", "3ef43a0b657b3be2300d5770ece849e0",
                    "fac2f116257151a9d068a22e544a4917", preprocessing="tf", top1=76.0,
                    parity=keras_parity("ResNet50V2")),
        *keras_pair("resnet101v2", "resnet", "resnet101v2", "6343647c601c52e1368623803854d971",
                    "c0ed64b8031c3730f411d2eb4eea35b5", preprocessing="tf", top1=77.2),
        *keras_pair("resnet152v2", "resnet", "resnet152v2", "a49b44d1979771252814e80f8ec446f9",
                    "ed17cf2e0169df9d443503ef94b23b33", preprocessing="tf", top1=78.0),
        torchvision_record("resnext50_32x4d", "resnext50_32x4d-7cdf4587.pth", input_size=224,
                           interpolation="bilinear", crop_pct=0.875, preprocessing="torch", top1=77.618,
                           parity=torch_parity("torchvision", "resnext50_32x4d")),
        *keras_pair("resnext50_32x4d", "resnet", "resnext50", "67a5b30d522ed92f75a1f16eef299d1a",
                    "62527c363bdd9ec598bed41947b379fc", preprocessing="torch"),
        *keras_pair("resnext101_32x4d", "resnet", "resnext101", "34fb605428fcc7aa4d62f44404c11509",
                    "0f678c91647380debd923963594981b3", preprocessing="torch"),
        torchvision_record("resnext101_32x8d", "resnext101_32x8d-8ba56ff5.pth", input_size=224,
                           interpolation="bilinear", crop_pct=0.875, preprocessing="torch", top1=79.312),
        # ResNeXt101_64X4D_Weights.IMAGENET1K_V1: resize 232, centre crop 224, bilinear.
        torchvision_record("resnext101_64x4d", "resnext101_64x4d-173b62eb.pth", input_size=224,
                           interpolation="bilinear", crop_pct=224 / 232, preprocessing="torch", top1=83.246,
                           parity=torch_parity("torchvision", "resnext101_64x4d")),
    ),
    keras=KerasMapping(place=_keras_place, block_outputs=_keras_block_outputs, guess=_keras_guess),
    torch=TorchMapping(layouts=(KeyLayout(TORCHVISION_LAYOUT, lambda keys: any(k.startswith("layer1.") for k in keys),
                                          lambda keys: {k: _torchvision_key(k) for k in keys}),),
                       guess=_torch_guess),
)
