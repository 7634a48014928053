"""Xception (Chollet, 2017) and the seed's CIFAR-10 variants, from one builder.

Module paths follow Keras layer names: replace the first ``_`` of a Keras name with ``.``
(``block4_sepconv2_bn`` -> ``block4.sepconv2_bn``). Keras leaves the residual 1x1 conv and its
BatchNorm unnamed; here they are ``blockN.residual`` and ``blockN.residual_bn``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import torch
from torch import nn

from ..layers import Conv2d, KernelInit, MaxPool2d, Padding, SeparableConv2d, batch_norm, init_keras_
from .base import ConvNet
from .keras_names import UNNAMED_ADD, UNNAMED_BN, UNNAMED_CONV, in_creation_order, is_unnamed, place_in_order
from .published import TIMM_CADENE, keras_pair, keras_parity, record, torch_parity
from .spec import Family, KerasMapping, KeyLayout, ModelCfg, Placement, TorchMapping


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
# convzoo's fast recipe: a stride-2 stem, widths 32-512, one middle block at 4x4 (at 32x32 input).
XCEPTION_TINY = (Block((128, 128), stride=2, pool=True, first_act=False), Block((256, 256), stride=2, pool=True),
                 Block((256, 256, 256)), Block((512,), residual=False, preact=False))


class XceptionBlock(nn.Module):
    """Separable conv + BN (+ ReLU) per width, an optional max-pool, and the residual sum."""

    def __init__(self, in_channels: int, cfg: Block, *, bias: bool, bn_eps: float, bn_momentum: float,
                 pool_padding: Padding) -> None:
        super().__init__()
        self.cfg = cfg
        out_channels = cfg.widths[-1]
        self.keeps_shape = cfg.residual and not cfg.pool and cfg.stride == 1 and in_channels == out_channels
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

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Each separable conv's pointwise conv with its BN, and the residual conv with its BN."""
        pairs = [(f"sepconv{i}.pointwise", f"sepconv{i}_bn") for i in range(1, len(self.cfg.widths) + 1)]
        return pairs + ([("residual", "residual_bn")] if self.has_residual_conv else [])

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
        self.depth = len(convs)
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
                 bn_eps: float = 1e-3, bn_momentum: float = 0.01, kernel_init: KernelInit = "glorot_uniform",
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
        self.kernel_l2 = kernel_l2
        self._init_head(c, num_classes, global_pool, drop_rate, in_chans)
        init_keras_(self, kernel_init)


    def stage_groups(self) -> dict[str, str]:
        """Chollet's flows, read from the table: the middle flow is the run of residual blocks that keep their
        input's shape; the stem and the blocks before it are the entry flow, the blocks after it the exit flow
        (without such blocks, the last block alone is the exit flow)."""
        middle = [i for i, n in enumerate(self.stage_names) if getattr(getattr(self, n), "keeps_shape", False)]
        first, last = (middle[0], middle[-1]) if middle else (len(self.stage_names) - 1, len(self.stage_names) - 2)
        return {n: "entry flow" if i < first else "middle flow" if i <= last else "exit flow"
                for i, n in enumerate(self.stage_names)}

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """The stem's ``convN``/``convN_bn``, and each block's separable and residual convs with their BNs."""
        pairs = [(f"block1.conv{i}", f"block1.conv{i}_bn") for i in range(1, self.block1.depth + 1)]
        for name in self.stage_names[1:]:
            pairs += [(f"{name}.{c}", f"{name}.{b}") for c, b in getattr(self, name).conv_bn_pairs()]
        return pairs


# Keras: named layers map by rule (``block4_sepconv2_bn`` -> ``block4.sepconv2_bn``); the unnamed residual
# convs and BNs (``conv2d_N``, ``batch_normalization_N``) by creation order onto the blocks that have one.
_KERAS_NAMED = re.compile(r"(block\d+)_(.+)")


def _keras_place(names: Sequence[str], model: nn.Module) -> tuple[list[Placement], list[str]]:
    slots = [n for n in model.stage_names if getattr(getattr(model, n), "has_residual_conv", False)]
    placed, unplaced = place_in_order(names, UNNAMED_CONV, [f"{n}.residual" for n in slots], "residual convs")
    bns, more = place_in_order(names, UNNAMED_BN, [f"{n}.residual_bn" for n in slots], "residual BNs")
    placed, unplaced = placed + bns, unplaced + more
    for name in names:
        m = _KERAS_NAMED.fullmatch(name)
        if name == "predictions":
            placed.append(Placement(name, "fc"))
        elif m:
            placed.append(Placement(name, f"{m.group(1)}.{m.group(2)}"))
        elif not is_unnamed(name):
            unplaced.append(f"Keras '{name}'")
    return placed, unplaced


def _keras_block_outputs(names: Sequence[str], model: nn.Module) -> dict[str, str]:
    """Keras' residual sums (``add``, ``add_1``, ... in creation order) are the residual blocks' outputs."""
    adds = in_creation_order(names, UNNAMED_ADD)
    blocks = [n for n in model.stage_names if getattr(getattr(model, n), "cfg", None) is not None
              and getattr(model, n).cfg.residual]
    return dict(zip(adds, blocks)) if len(adds) == len(blocks) else {}


def _keras_guess(shapes: Mapping[str, Sequence[tuple[int, ...]]]) -> str | None:
    return "xception" if "block14_sepconv2" in shapes else None


# timm's legacy_xception: ``blockN.rep`` Sequentials (numbered from block1 = our block2), ``skip``/``skipbn``,
# the stem as ``conv1``/``bn1``/``conv2``/``bn2`` and block 14 as ``conv3``/``bn3``/``conv4``/``bn4``.
TIMM_LAYOUT = "timm legacy_xception"
_TIMM_TOP = {"conv1": "block1.conv1", "bn1": "block1.conv1_bn", "conv2": "block1.conv2", "bn2": "block1.conv2_bn",
             "bn3": "block14.sepconv1_bn", "bn4": "block14.sepconv2_bn", "fc": "fc", "last_linear": "fc"}
_TIMM_SEPARABLE = {"conv1": "depthwise", "pointwise": "pointwise"}


def _timm_rename_outside_rep(key: str) -> str:
    m = re.fullmatch(r"block(\d+)\.(skip|skipbn)\.(.+)", key)
    if m:
        part = "residual" if m.group(2) == "skip" else "residual_bn"
        return f"block{int(m.group(1)) + 1}.{part}.{m.group(3)}"
    m = re.fullmatch(r"(conv3|conv4)\.(conv1|pointwise)\.(.+)", key)
    if m:
        k = 1 if m.group(1) == "conv3" else 2
        return f"block14.sepconv{k}.{_TIMM_SEPARABLE[m.group(2)]}.{m.group(3)}"
    head, _, tail = key.partition(".")
    return f"{_TIMM_TOP.get(head, head)}.{tail}"


def _timm_rename(keys: Sequence[str]) -> dict[str, str]:
    """timm key -> convzoo key. Inside a block the ``rep`` Sequential's separable convs and BatchNorms become
    ``sepconvK`` / ``sepconvK_bn`` in order."""
    renamed = {}
    reps: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for key in keys:
        m = re.fullmatch(r"block(\d+)\.rep\.(\d+)\.(.+)", key)
        if m:
            reps[m.group(1)][int(m.group(2))].append(key)
        else:
            renamed[key] = _timm_rename_outside_rep(key)
    for block, entries in reps.items():
        k = 0
        for index in sorted(entries):
            tails = {key: key.split(f".rep.{index}.", 1)[1] for key in entries[index]}
            separable = any(t.partition(".")[0] in _TIMM_SEPARABLE for t in tails.values())
            k += separable
            for key, tail in tails.items():
                if separable:
                    sub, _, param = tail.partition(".")
                    renamed[key] = f"block{int(block) + 1}.sepconv{k}.{_TIMM_SEPARABLE.get(sub, sub)}.{param}"
                else:
                    renamed[key] = f"block{int(block) + 1}.sepconv{k}_bn.{tail}"
    return renamed


def _torch_guess(layout: str, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    if layout == TIMM_LAYOUT:
        return "xception_timm"
    return "xception" if "block14.sepconv2.pointwise.weight" in shapes else None


SEED_CIFAR = dict(stem_padding="same", bias=True)
SEED_HE_WD = dict(SEED_CIFAR, kernel_init="he_normal", kernel_l2=1e-4, bn_eps=1e-5, bn_momentum=0.1)
_IMAGENET = dict(input_size=(3, 299, 299), min_input_size=(3, 71, 71), preprocessing="tf", interpolation="bicubic",
                 crop_pct=0.875, first_conv="block1.conv1")
_CIFAR = dict(input_size=(3, 32, 32), min_input_size=(3, 32, 32), num_classes=10, preprocessing="cifar",
              interpolation="bicubic", crop_pct=1.0, first_conv="block1.conv1")

FAMILY = Family(
    name="xception",
    builder=Xception,
    models=(
        ModelCfg("xception", "keras.applications.Xception", keras_app="Xception", timm_name="legacy_xception",
                 exact=("keras",), **_IMAGENET),
        ModelCfg("xception_timm", "timm legacy_xception (symmetric pooling, BN eps 1e-5)", keras_app="Xception",
                 timm_name="legacy_xception", exact=("timm",),
                 kwargs=dict(pool_padding=1, bn_eps=1e-5, bn_momentum=0.1), **_IMAGENET),
        ModelCfg("xception_cifar", "seed xception_1 (Keras Xception, 'same' padding, conv biases)",
                 kwargs=SEED_CIFAR, **_CIFAR),
        ModelCfg("xception_cifar_he_wd", "seed (he_normal, L2 1e-4, BN momentum 0.9 / eps 1e-5)",
                 kwargs=SEED_HE_WD, **_CIFAR),
        ModelCfg("xception_cifar_slim", "seed (he_wd, blocks 2-4 stride 1)",
                 kwargs=dict(blocks=XCEPTION_SLIM, **SEED_HE_WD), **_CIFAR),
        ModelCfg("xception_cifar_slim_thinner", "seed (slim, 3x3 conv to 364, widths halved)",
                 kwargs=dict(stem=STEM_THINNER, blocks=XCEPTION_THINNER, **SEED_HE_WD), **_CIFAR),
        ModelCfg("xception_cifar_tiny", "convzoo fast recipe (stride-2 stem, widths 32-512, middle block at 4x4)",
                 kwargs=dict(stem=((32, 2), (64, 1)), blocks=XCEPTION_TINY, stem_padding="same", bias=False,
                             kernel_init="he_normal", bn_eps=1e-5, bn_momentum=0.1), **_CIFAR),
    ),
    records=(
        *keras_pair("xception", "xception", "xception", "0a58e3b7378bc2990ea3b43d5981f1f6",
                    "b0042744bf5b25fce3cb969f33bebb97", input_size=299, interpolation="bicubic", preprocessing="tf",
                    top1=79.0, parity=keras_parity("Xception")),
        record("xception_timm.timm", "xception_timm", "timm", f"{TIMM_CADENE}xception-43020ad28.pth", file_hash=None,
               input_size=299, interpolation="bicubic", crop_pct=0.8975, preprocessing="tf",
               parity=torch_parity("timm", "legacy_xception")),
    ),
    keras=KerasMapping(place=_keras_place, block_outputs=_keras_block_outputs, guess=_keras_guess),
    torch=TorchMapping(layouts=(KeyLayout(TIMM_LAYOUT, lambda keys: any(re.match(r"block\d+\.rep\.", k) for k in keys),
                                          _timm_rename),),
                       guess=_torch_guess),
)
