"""Inception V3 (Szegedy et al., 2016) in torchvision/timm layout, Keras' layout, and the seed's CIFAR stem.

Module names are torchvision's (``Mixed_6e.branch7x7dbl_3.conv``), which are also TF-slim's end-point
names, so torchvision and timm state dicts load as they are. ``depth_multiplier`` and ``min_depth`` scale
every convolution as in slim: ``max(int(filters * depth_multiplier), min_depth)``.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError, InputShapeError
from ..layers import AvgPool2d, ConvBnAct, MaxPool2d, Padding
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD
from .base import ConvNet, LogitsWithAux
from .keras_names import UNNAMED_BN, UNNAMED_CONV, is_unnamed, place_in_order
from .published import keras_pair, keras_parity, torch_parity, torchvision_record
from .spec import Family, KerasMapping, ModelCfg, Placement, TorchMapping

# Stem rows: (name, filters, kernel, stride, padding); None as filters is a 3x3/2 max-pool.
STEM = (
    ("Conv2d_1a_3x3", 32, 3, 2, 0),
    ("Conv2d_2a_3x3", 32, 3, 1, 0),
    ("Conv2d_2b_3x3", 64, 3, 1, 1),
    ("maxpool1", None, 3, 2, 0),
    ("Conv2d_3b_1x1", 80, 1, 1, 0),
    ("Conv2d_4a_3x3", 192, 3, 1, 0),
    ("maxpool2", None, 3, 2, 0),
)
# The seed's CIFAR stem: one 3x3 conv, so 32x32 inputs keep their resolution.
STEM_CIFAR = (("Conv2d_1a_3x3", 192, 3, 1, 1),)
# Mixed rows: (name, block type, argument) — argument is pool_features (A) or channels_7x7 (C).
MIXED = (
    ("Mixed_5b", "A", 32),
    ("Mixed_5c", "A", 64),
    ("Mixed_5d", "A", 64),
    ("Mixed_6a", "B", None),
    ("Mixed_6b", "C", 128),
    ("Mixed_6c", "C", 160),
    ("Mixed_6d", "C", 160),
    ("Mixed_6e", "C", 192),
    ("Mixed_7a", "D", None),
    ("Mixed_7b", "E", None),
    ("Mixed_7c", "E", None),
)
AUX_AFTER = "Mixed_6e"
# The three grids of the paper (at 299x299 input); each reduction block (B, D) starts the next one.
GRIDS = ("35x35 grid", "17x17 grid", "8x8 grid")


class _Mixed(nn.Module):
    """Branches run side by side and concatenated; ``branches`` lists each branch's modules by name."""

    branches: tuple[tuple[str, ...], ...]
    out_channels: int

    def _run(self, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        for n in names:
            x = getattr(self, n)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._run(x, b) for b in self.branches], 1)


class InceptionA(_Mixed):
    branches = (("branch1x1",), ("branch5x5_1", "branch5x5_2"),
                ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), ("pool", "branch_pool"))

    def __init__(self, c: int, pool_features: int, conv: Callable[..., nn.Module], d: Callable[[int], int],
                 avg_pool: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.branch1x1 = conv(c, d(64), 1)
        self.branch5x5_1 = conv(c, d(48), 1)
        self.branch5x5_2 = conv(d(48), d(64), 5, padding=2)
        self.branch3x3dbl_1 = conv(c, d(64), 1)
        self.branch3x3dbl_2 = conv(d(64), d(96), 3, padding=1)
        self.branch3x3dbl_3 = conv(d(96), d(96), 3, padding=1)
        self.pool = avg_pool()
        self.branch_pool = conv(c, d(pool_features), 1)
        self.out_channels = d(64) * 2 + d(96) + d(pool_features)


class InceptionB(_Mixed):
    branches = (("branch3x3",), ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), ("pool",))

    def __init__(self, c: int, _: None, conv: Callable[..., nn.Module], d: Callable[[int], int],
                 avg_pool: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.branch3x3 = conv(c, d(384), 3, stride=2)
        self.branch3x3dbl_1 = conv(c, d(64), 1)
        self.branch3x3dbl_2 = conv(d(64), d(96), 3, padding=1)
        self.branch3x3dbl_3 = conv(d(96), d(96), 3, stride=2)
        self.pool = MaxPool2d(3, 2)
        self.out_channels = d(384) + d(96) + c


class InceptionC(_Mixed):
    branches = (("branch1x1",), ("branch7x7_1", "branch7x7_2", "branch7x7_3"),
                ("branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"),
                ("pool", "branch_pool"))

    def __init__(self, c: int, channels_7x7: int, conv: Callable[..., nn.Module], d: Callable[[int], int],
                 avg_pool: Callable[[], nn.Module]) -> None:
        super().__init__()
        c7 = d(channels_7x7)
        self.branch1x1 = conv(c, d(192), 1)
        self.branch7x7_1 = conv(c, c7, 1)
        self.branch7x7_2 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = conv(c7, d(192), (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = conv(c, c7, 1)
        self.branch7x7dbl_2 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = conv(c7, d(192), (1, 7), padding=(0, 3))
        self.pool = avg_pool()
        self.branch_pool = conv(c, d(192), 1)
        self.out_channels = d(192) * 4


class InceptionD(_Mixed):
    branches = (("branch3x3_1", "branch3x3_2"),
                ("branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"), ("pool",))

    def __init__(self, c: int, _: None, conv: Callable[..., nn.Module], d: Callable[[int], int],
                 avg_pool: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.branch3x3_1 = conv(c, d(192), 1)
        self.branch3x3_2 = conv(d(192), d(320), 3, stride=2)
        self.branch7x7x3_1 = conv(c, d(192), 1)
        self.branch7x7x3_2 = conv(d(192), d(192), (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = conv(d(192), d(192), (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = conv(d(192), d(192), 3, stride=2)
        self.pool = MaxPool2d(3, 2)
        self.out_channels = d(320) + d(192) + c


class InceptionE(_Mixed):
    """The 8x8 block whose 3x3 branches split into parallel 1x3 and 3x1 convolutions."""

    def __init__(self, c: int, _: None, conv: Callable[..., nn.Module], d: Callable[[int], int],
                 avg_pool: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.branch1x1 = conv(c, d(320), 1)
        self.branch3x3_1 = conv(c, d(384), 1)
        self.branch3x3_2a = conv(d(384), d(384), (1, 3), padding=(0, 1))
        self.branch3x3_2b = conv(d(384), d(384), (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv(c, d(448), 1)
        self.branch3x3dbl_2 = conv(d(448), d(384), 3, padding=1)
        self.branch3x3dbl_3a = conv(d(384), d(384), (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv(d(384), d(384), (3, 1), padding=(1, 0))
        self.pool = avg_pool()
        self.branch_pool = conv(c, d(192), 1)
        self.out_channels = d(320) + d(384) * 4 + d(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(self.pool(x))], 1)


BLOCKS = {"A": InceptionA, "B": InceptionB, "C": InceptionC, "D": InceptionD, "E": InceptionE}


class InceptionAux(nn.Module):
    """The auxiliary classifier on the 17x17 grid (``conv0``, ``conv1``, ``fc``)."""

    def __init__(self, c: int, num_classes: int, conv: Callable[..., nn.Module], d: Callable[[int], int]) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3)
        self.conv0 = conv(c, d(128), 1)
        self.conv1 = conv(d(128), d(768), 5)
        self.fc = nn.Linear(d(768), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 17 or x.shape[-2] < 17:
            raise InputShapeError(f"the auxiliary classifier needs a 17x17 {AUX_AFTER} map (299x299 input with the "
                                  f"ImageNet stem), got {x.shape[-2]}x{x.shape[-1]}")
        x = self.conv1(self.conv0(self.pool(x)))
        return self.fc(x.mean((2, 3)))


class InceptionV3(ConvNet):
    """Inception V3 from the stem and mixed-block tables.

    torchvision/timm layout by default (BN with gamma, eps 1e-3, avg-pool counting padding).
    ``bn_scale=False, pool_padding='same', bn_momentum=0.01`` is Keras' ``InceptionV3``.
    Built with ``aux_logits``, the forward pass returns :class:`LogitsWithAux` ``(logits, aux_logits)`` in
    every mode (the auxiliary head needs a 17x17 ``Mixed_6e`` map); built without it, the logits.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, global_pool: str = "avg", drop_rate: float = 0.5,
                 *, aux_logits: bool = False, depth_multiplier: float = 1.0, min_depth: int = 16,
                 stem: tuple = STEM, bn_scale: bool = True, bn_momentum: float = 0.1, bn_eps: float = 1e-3,
                 pool_padding: Padding = 1) -> None:
        super().__init__()
        if depth_multiplier <= 0:
            raise ConfigError(f"depth_multiplier must be > 0, got {depth_multiplier}")

        def d(filters: int) -> int:
            return max(int(filters * depth_multiplier), min_depth)

        conv = partial(ConvBnAct, bn_eps=bn_eps, bn_momentum=bn_momentum, bn_scale=bn_scale)
        self.stage_names, self.feature_info, self._groups = [], [], {}
        c, reduction = self._add_stem(stem, in_chans, conv, d)
        self.aux_logits = aux_logits
        c, reduction = self._add_mixed(c, reduction, conv, d, partial(AvgPool2d, 3, 1, pool_padding), num_classes)
        self.feature_info.append(dict(module=self.stage_names[-1], num_chs=c, reduction=reduction))
        self._init_head(c, num_classes, global_pool, drop_rate, in_chans)
        self._init_weights()

    def _add_stem(self, stem: tuple, c: int, conv: Callable[..., nn.Module], d: Callable[[int], int]
                  ) -> tuple[int, int]:
        reduction = 1
        for name, filters, k, s, p in stem:
            layer = MaxPool2d(k, s) if filters is None else conv(c, d(filters), k, s, p)
            if s > 1 and self.stage_names:
                self.feature_info.append(dict(module=self.stage_names[-1], num_chs=c, reduction=reduction))
            self.add_module(name, layer)
            self.stage_names.append(name)
            self._groups[name] = "stem"
            c = c if filters is None else d(filters)
            reduction *= s
        return c, reduction

    def _add_mixed(self, c: int, reduction: int, conv: Callable[..., nn.Module], d: Callable[[int], int],
                   avg_pool: Callable[[], nn.Module], num_classes: int) -> tuple[int, int]:
        grid = 0
        for name, kind, arg in MIXED:
            block = BLOCKS[kind](c, arg, conv, d, avg_pool)
            if kind in "BD":
                self.feature_info.append(dict(module=self.stage_names[-1], num_chs=c, reduction=reduction))
                reduction *= 2
                grid += 1
            self.add_module(name, block)
            self.stage_names.append(name)
            self._groups[name] = GRIDS[grid]
            c = block.out_channels
            if name == AUX_AFTER:
                self.aux_channels = c
                self.AuxLogits = InceptionAux(c, num_classes, conv, d) if self.aux_logits else None
        return c, reduction

    def stage_groups(self) -> dict[str, str]:
        """The stem, then the paper's 35x35, 17x17 and 8x8 grids (a reduction block starts the next grid)."""
        return dict(self._groups)

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Every ``ConvBnAct``'s ``conv`` and ``bn`` (the auxiliary head's included)."""
        return [(f"{n}.conv", f"{n}.bn") for n, m in self.named_modules() if isinstance(m, ConvBnAct)]

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.1, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.AuxLogits is not None:
            nn.init.trunc_normal_(self.AuxLogits.conv1.conv.weight, std=0.01, a=-2, b=2)
            nn.init.trunc_normal_(self.AuxLogits.fc.weight, std=0.001, a=-2, b=2)

    def forward_endpoints(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate output by its slim name, plus ``AuxLogits`` (when built), ``PreLogits`` and ``Logits``."""
        x = self.check_input(x)
        out = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
            if name == AUX_AFTER and self.AuxLogits is not None:
                out["AuxLogits"] = self.AuxLogits(x)
        out["PreLogits"] = self.forward_head(x, pre_logits=True)
        out["Logits"] = self.fc(self.head_drop(out["PreLogits"]))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor | LogitsWithAux:
        x = self.check_input(x)
        aux = None
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name == AUX_AFTER and self.AuxLogits is not None:
                aux = self.AuxLogits(x)
        x = self.forward_head(x)
        return x if aux is None else LogitsWithAux(x, aux)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (and the auxiliary classifier, if any) for ``num_classes``."""
        super().reset_classifier(num_classes, global_pool)
        if self.AuxLogits is not None:
            self.AuxLogits.fc = nn.Linear(self.AuxLogits.fc.in_features, max(num_classes, 1))


def _keras_place(names: Sequence[str], model: nn.Module) -> tuple[list[Placement], list[str]]:
    """keras-applications' InceptionV3 names no convolution or BatchNorm: they map, in creation order, onto
    the ``ConvBnAct`` modules in module order (the auxiliary head has none in Keras)."""
    slots = [n for n, m in model.named_modules() if isinstance(m, ConvBnAct) and not n.startswith("AuxLogits")]
    placed, unplaced = place_in_order(names, UNNAMED_CONV, [f"{n}.conv" for n in slots], "convolutions")
    bns, more = place_in_order(names, UNNAMED_BN, [f"{n}.bn" for n in slots], "BatchNorms")
    placed, unplaced = placed + bns, unplaced + more
    for name in names:
        if name == "predictions":
            placed.append(Placement(name, "fc"))
        elif not is_unnamed(name):
            unplaced.append(f"Keras '{name}'")
    return placed, unplaced


def _keras_block_outputs(names: Sequence[str], model: nn.Module) -> dict[str, str]:
    """Keras' ``mixedN`` concatenations are the N-th mixed block's output."""
    mixed = [n for n in model.stage_names if n.startswith("Mixed_")]
    return {n: mixed[int(n[5:])] for n in names if re.fullmatch(r"mixed\d+", n) and int(n[5:]) < len(mixed)}


def _keras_guess(shapes: Mapping[str, Sequence[tuple[int, ...]]]) -> str | None:
    return "inception_v3_keras" if sum(1 for n in shapes if UNNAMED_CONV.fullmatch(n)) == 94 else None


def _torch_guess(layout: str, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """torchvision's and timm's names are convzoo's; Keras' layout has no BatchNorm gamma."""
    if not any(k.startswith("Mixed_7c.") for k in shapes):
        return None
    return "inception_v3" if "Mixed_7c.branch1x1.bn.weight" in shapes else "inception_v3_keras"


# torchvision's transform_input: inputs normalised with the ImageNet mean and std, mapped back to [-1, 1]
# by x * std / 0.5 + (mean - 0.5) / 0.5 per channel (torchvision/models/inception.py, _transform_input).
TORCHVISION_INPUT_AFFINE = (tuple(s / 0.5 for s in IMAGENET_STD), tuple((m - 0.5) / 0.5 for m in IMAGENET_MEAN))
_IMAGENET = dict(input_size=(3, 299, 299), min_input_size=(3, 75, 75), interpolation="bicubic", crop_pct=0.875,
                 first_conv="Conv2d_1a_3x3.conv", aux_classifier="AuxLogits.fc")
_REFERENCES = dict(keras_app="InceptionV3", timm_name="inception_v3", torchvision_name="inception_v3")

FAMILY = Family(
    name="inception_v3",
    builder=InceptionV3,
    models=(
        ModelCfg("inception_v3", "torchvision inception_v3, timm inception_v3", preprocessing="torch", drop_rate=0.5,
                 exact=("torchvision", "timm"), **_REFERENCES, **_IMAGENET),
        ModelCfg("inception_v3_keras", "keras.applications.InceptionV3", preprocessing="tf", exact=("keras",),
                 kwargs=dict(bn_scale=False, pool_padding="same", bn_momentum=0.01), **_REFERENCES, **_IMAGENET),
        ModelCfg("inception_v3_cifar", "seed inception_v3_slim (stem replaced by one 3x3 conv)",
                 input_size=(3, 32, 32), min_input_size=(3, 32, 32), num_classes=10, preprocessing="cifar",
                 crop_pct=1.0, first_conv="Conv2d_1a_3x3.conv", aux_classifier="AuxLogits.fc",
                 kwargs=dict(stem=STEM_CIFAR)),
    ),
    records=(
        *keras_pair("inception_v3_keras", "inception_v3", "inception_v3", "9a0d58056eeedaa3f26cb7ebd46da564",
                    "bcbd6486424b2319ff4ef7d526e38f63", input_size=299, interpolation="bicubic", preprocessing="tf",
                    top1=77.9, parity=keras_parity("InceptionV3")),
        # torchvision evaluates at resize 342, centre crop 299, bilinear; its transform_input is folded in.
        torchvision_record("inception_v3", "inception_v3_google-0cc3c7bd.pth", input_size=299,
                           interpolation="bilinear", crop_pct=299 / 342, preprocessing="torch", top1=77.294,
                           input_affine=TORCHVISION_INPUT_AFFINE,
                           parity=f"{torch_parity('torchvision', 'inception_v3')}, "
                                  "tests/test_records.py::test_transform_input_fold_matches_torchvision"),
    ),
    keras=KerasMapping(place=_keras_place, block_outputs=_keras_block_outputs, guess=_keras_guess),
    torch=TorchMapping(layouts=(), guess=_torch_guess),
)
