"""Xception (Chollet, 2017) and the seed's CIFAR-10 variants, from one builder.

Module paths follow Keras layer names: replace the first ``_`` of a Keras name with ``.``
(``block4_sepconv2_bn`` -> ``block4.sepconv2_bn``). Keras leaves the residual 1x1 conv and its
BatchNorm unnamed; here they are ``blockN.residual`` and ``blockN.residual_bn``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..layers import Conv2d, MaxPool2d, Padding, SeparableConv2d, batch_norm, init_keras_
from ..registry import register_model
from .base import ConvNet


@dataclass(frozen=True)
class Block:
    """One row of the table: a residual block of separable convolutions."""

    widths: tuple[int, ...]  # output channels of each separable conv
    stride: int = 1  # stride of the closing max-pool and of the residual 1x1 conv
    pool: bool = False  # close with a 3x3 max-pool
    residual: bool = True  # add the input, through a 1x1 conv + BN when the shape changes
    preact: bool = True  # ReLU before each separable conv; False: after each (block 14)
    first_act: bool = True  # with preact: a ReLU before the first conv too (block 2 has none)


# Stem: (filters, stride) of each plain 3x3 conv of block 1.
STEM = ((32, 2), (64, 1))
ENTRY = (
    Block((128, 128), stride=2, pool=True, first_act=False),  # block2
    Block((256, 256), stride=2, pool=True),  # block3
    Block((728, 728), stride=2, pool=True),  # block4
)
MIDDLE = (Block((728, 728, 728)),) * 8  # block5 .. block12
EXIT = (
    Block((728, 1024), stride=2, pool=True),  # block13
    Block((1536, 2048), residual=False, preact=False),  # block14
)
XCEPTION = ENTRY + MIDDLE + EXIT
# The seed's slim variant keeps 16x16 through the entry flow at 32x32 input.
XCEPTION_SLIM = tuple(replace(b, stride=1) for b in ENTRY) + MIDDLE + EXIT
# The seed's slim_thinner: a 3x3 conv to 364 instead of blocks 2-4, every width halved.
STEM_THINNER = ((32, 2), (64, 1), (364, 1))
XCEPTION_THINNER = (
    (Block((364, 364, 364)),) * 4
    + (Block((364, 512), stride=2, pool=True), Block((768, 1024), residual=False, preact=False))
)


class XceptionBlock(nn.Module):
    """Separable conv + BN (+ ReLU) per width, an optional max-pool, and the residual sum."""

    def __init__(self, in_channels: int, cfg: Block, *, bias: bool, bn_eps: float, bn_momentum: float,
                 pool_padding: Padding) -> None:
        super().__init__()
        self.cfg = cfg
        out_channels = cfg.widths[-1]
        self.has_residual_conv = cfg.residual and (cfg.stride != 1 or in_channels != out_channels)
        if self.has_residual_conv:
            self.residual = Conv2d(in_channels, out_channels, 1, cfg.stride, "same", bias=bias)
            self.residual_bn = batch_norm(out_channels, bn_eps, bn_momentum)
        c = in_channels
        for i, w in enumerate(cfg.widths, 1):
            if cfg.preact and (i > 1 or cfg.first_act):
                # The first ReLU must not overwrite the block input, which the residual still needs.
                self.add_module(f"sepconv{i}_act", nn.ReLU(inplace=i > 1))
            self.add_module(f"sepconv{i}", SeparableConv2d(c, w, 3, 1, "same", bias=bias))
            self.add_module(f"sepconv{i}_bn", batch_norm(w, bn_eps, bn_momentum))
            if not cfg.preact:
                self.add_module(f"sepconv{i}_act", nn.ReLU(inplace=True))
            c = w
        if cfg.pool:
            self.pool = MaxPool2d(3, cfg.stride, pool_padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        for name, module in self.named_children():
            if not name.startswith("residual"):
                x = module(x)
        if self.has_residual_conv:
            x = x + self.residual_bn(self.residual(shortcut))
        elif self.cfg.residual:
            x = x + shortcut
        return x


class Stem(nn.Module):
    """Block 1: plain 3x3 convolutions, each with BN and ReLU (``convN``, ``convN_bn``, ``convN_act``)."""

    def __init__(self, in_channels: int, convs: tuple[tuple[int, int], ...], *, padding: Padding, bias: bool,
                 bn_eps: float, bn_momentum: float) -> None:
        super().__init__()
        for i, (filters, stride) in enumerate(convs, 1):
            self.add_module(f"conv{i}", Conv2d(in_channels, filters, 3, stride, padding, bias=bias))
            self.add_module(f"conv{i}_bn", batch_norm(filters, bn_eps, bn_momentum))
            self.add_module(f"conv{i}_act", nn.ReLU(inplace=True))
            in_channels = filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


class Xception(ConvNet):
    """Xception from a stem table and a block table.

    Defaults are Keras-applications' (BN eps 1e-3, momentum 0.99 in Keras terms, 'valid' stem, TF 'same'
    pooling, no conv biases, glorot-uniform init). ``pool_padding=1`` and ``bn_eps=1e-5`` give timm's
    ``legacy_xception`` conventions; ``stem_padding='same'`` and ``bias=True`` the seed's CIFAR networks.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, global_pool: str = "avg", drop_rate: float = 0.0,
                 *, stem: tuple[tuple[int, int], ...] = STEM, blocks: tuple[Block, ...] = XCEPTION,
                 stem_padding: Padding = "valid", pool_padding: Padding = "same", bias: bool = False,
                 bn_eps: float = 1e-3, bn_momentum: float = 0.01, kernel_init: str = "glorot_uniform",
                 kernel_l2: float = 0.0) -> None:
        super().__init__()
        common = dict(bias=bias, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.block1 = Stem(in_chans, stem, padding=stem_padding, **common)
        self.stage_names = ["block1"]
        reduction = 1
        for _, s in stem:
            reduction *= s
        c = stem[-1][0]
        self.feature_info = [dict(module="block1", num_chs=c, reduction=reduction)]
        for i, cfg in enumerate(blocks, 2):
            name = f"block{i}"
            if cfg.pool and cfg.stride > 1:
                if self.feature_info[-1]["module"] != self.stage_names[-1]:
                    self.feature_info.append(dict(module=self.stage_names[-1], num_chs=c, reduction=reduction))
                reduction *= cfg.stride
            self.add_module(name, XceptionBlock(c, cfg, pool_padding=pool_padding, **common))
            self.stage_names.append(name)
            c = cfg.widths[-1]
        self.feature_info.append(dict(module=self.stage_names[-1], num_chs=c, reduction=reduction))
        self.min_size = 71 if stem_padding == "valid" else 1
        self.kernel_l2 = kernel_l2
        self._init_head(c, num_classes, global_pool, drop_rate, in_chans)
        init_keras_(self, kernel_init)


def _register(name: str, reference: str, **kwargs) -> None:
    cifar = kwargs.get("stem_padding") == "same"
    register_model(
        name, Xception, family="xception", reference=reference,
        input_size=(3, 32, 32) if cifar else (3, 299, 299),
        min_input_size=(3, 32, 32) if cifar else (3, 71, 71),
        num_classes=10 if cifar else 1000,
        preprocessing="cifar" if cifar else "tf",
        interpolation="bicubic", crop_pct=1.0 if cifar else 0.875,
        first_conv="block1.conv1", classifier="fc", kwargs=kwargs,
    )


SEED_CIFAR = dict(stem_padding="same", bias=True)
SEED_HE_WD = dict(SEED_CIFAR, kernel_init="he_normal", kernel_l2=1e-4, bn_eps=1e-5, bn_momentum=0.1)

_register("xception", "keras.applications.Xception")
_register("xception_timm", "timm legacy_xception (symmetric pooling, BN eps 1e-5)",
          pool_padding=1, bn_eps=1e-5, bn_momentum=0.1)
_register("xception_cifar", "seed xception_1 (Keras Xception, 'same' padding, conv biases)", **SEED_CIFAR)
_register("xception_cifar_he_wd", "seed (he_normal, L2 1e-4, BN momentum 0.9 / eps 1e-5)", **SEED_HE_WD)
_register("xception_cifar_slim", "seed (he_wd, blocks 2-4 stride 1)", blocks=XCEPTION_SLIM, **SEED_HE_WD)
_register("xception_cifar_slim_thinner", "seed (slim, 3x3 conv to 364, widths halved)",
          stem=STEM_THINNER, blocks=XCEPTION_THINNER, **SEED_HE_WD)
_register("xception_cifar_tiny", "convzoo fast recipe (stride-2 stem, widths 32-512, middle block at 4x4)",
          stem=((32, 2), (64, 1)),
          blocks=(Block((128, 128), stride=2, pool=True, first_act=False), Block((256, 256), stride=2, pool=True),
                  Block((256, 256, 256)), Block((512,), residual=False, preact=False)),
          stem_padding="same", bias=False, kernel_init="he_normal", bn_eps=1e-5, bn_momentum=0.1)
