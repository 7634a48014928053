"""What every convzoo network shares: the classifier head, input checks, feature extraction, and what a
family's builder tells the tools (its diagram's groups, its conv/BatchNorm pairs)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import ConfigError, InputShapeError
from ..layers import check_min_size_traced
from .spec import ModelCfg


class LogitsWithAux(NamedTuple):
    """What a model built with an auxiliary classifier returns in every mode: (N, classes) each."""

    logits: torch.Tensor
    aux_logits: torch.Tensor


def logits_of(output: torch.Tensor | LogitsWithAux) -> torch.Tensor:
    """The main logits of a model's output (a tensor, or the ``logits`` of a :class:`LogitsWithAux`)."""
    return output.logits if isinstance(output, LogitsWithAux) else output


class ConvNet(nn.Module):
    """Base class: ``forward_features`` runs the modules named in ``stage_names`` in order, then
    ``forward_head`` pools and classifies. Subclasses set ``stage_names``, ``feature_info``, ``num_features``,
    call :meth:`_init_head`, and give :meth:`stage_groups` and :meth:`conv_bn_pairs`.

    ``default_cfg`` (also ``pretrained_cfg``) is the registered :class:`ModelCfg`, set by ``create_model``;
    its ``min_input_size`` is the smallest input the model accepts. ``aux_logits``: whether ``forward``
    returns a :class:`LogitsWithAux`, fixed when the model is built (by the builder argument of that name).
    ``classifier_activation`` (Keras' argument, set by ``create_model``): None, the logits, or ``'softmax'``,
    the classifier's probabilities (the main classifier's; an auxiliary one gives logits).
    """

    stage_names: list[str]
    feature_info: list[dict[str, Any]]
    num_features: int
    default_cfg: ModelCfg | None = None
    aux_logits: bool = False
    classifier_activation: str | None = None

    @property
    def head_hidden_size(self) -> int:
        """timm's width of the features the classifier takes (``forward_head(x, pre_logits=True)``): these
        heads have no hidden layer, so the pooled features' ``num_features``."""
        return self.num_features

    def _init_head(self, num_features: int, num_classes: int, global_pool: str, drop_rate: float, in_chans: int) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        if global_pool not in ("avg", "max", ""):
            raise ConfigError(f"global_pool must be 'avg', 'max' or '', got {global_pool!r}")
        self.global_pool = global_pool
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x``, after raising :class:`InputShapeError` when it is not (N, in_chans, H, W) with H, W at least
        the registered ``min_input_size`` (a network built outside ``create_model`` has no registered
        minimum). A TorchScript trace keeps the size check (a ``ValueError`` when the traced program runs)."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise InputShapeError(f"{type(self).__name__} expects input of shape (N, {self.in_chans}, H, W), "
                                  f"got {tuple(x.shape)}")
        if self.default_cfg is None:
            return x
        _, h, w = self.default_cfg.min_input_size
        if torch.jit.is_tracing():
            return check_min_size_traced(x, h, w, self.default_cfg.name)
        if x.shape[-2] < h or x.shape[-1] < w:
            raise InputShapeError(f"{type(self).__name__} needs inputs of at least {h}x{w}, "
                                  f"got {x.shape[-2]}x{x.shape[-1]}")
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature maps before global pooling."""
        x = self.check_input(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pooling, dropout, classifier and its activation (``pre_logits=True`` stops after pooling)."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        elif self.global_pool == "max":
            x = x.amax((2, 3))
        if pre_logits:
            return x
        x = self.fc(self.head_drop(x))
        return x.softmax(1) if self.classifier_activation == "softmax" and self.num_classes else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final linear layer (``nn.Identity`` when there is none)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` (0 removes it)."""
        if global_pool is not None:
            if global_pool not in ("avg", "max", ""):
                raise ConfigError(f"global_pool must be 'avg', 'max' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if self.default_cfg is not None:
            self.default_cfg = self.pretrained_cfg = replace(self.default_cfg, num_classes=num_classes)

    def stage_groups(self) -> dict[str, str]:
        """Each stage's group for the diagram (Xception's flows, Inception's grids), by stage name, in order."""
        raise NotImplementedError(f"{type(self).__name__} does not group its stages")

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """(convolution path, BatchNorm path) of every BatchNorm that directly follows a convolution and takes
        its whole output, which is what BatchNorm folding fuses."""
        raise NotImplementedError(f"{type(self).__name__} does not list its conv/BatchNorm pairs")


class FeatureInfo(list):
    """timm's ``FeatureInfo``: one dict per returned feature map (``module``, ``num_chs``, ``reduction``),
    with ``channels()``, ``reduction()`` and ``module_name()`` giving one value per map (``idx``: only that
    map, or those maps)."""

    def get(self, key: str, idx: int | list[int] | None = None) -> Any:
        """``key`` of every map, of map ``idx``, or of the maps in ``idx``."""
        if idx is None:
            return [info[key] for info in self]
        if isinstance(idx, (list, tuple)):
            return [self[i][key] for i in idx]
        return self[idx][key]

    def get_dicts(self, keys: list[str] | None = None, idx: int | list[int] | None = None) -> Any:
        """The dicts (only ``keys`` of them) of every map, of map ``idx``, or of the maps in ``idx``."""
        picked = self if idx is None else [self[i] for i in idx] if isinstance(idx, (list, tuple)) else [self[idx]]
        dicts = [dict(d) if keys is None else {k: d[k] for k in keys} for d in picked]
        return dicts[0] if isinstance(idx, int) else dicts

    def channels(self, idx: int | list[int] | None = None) -> Any:
        """Channels of the feature maps."""
        return self.get("num_chs", idx)

    def reduction(self, idx: int | list[int] | None = None) -> Any:
        """Strides of the feature maps, relative to the input."""
        return self.get("reduction", idx)

    def module_name(self, idx: int | list[int] | None = None) -> Any:
        """The modules whose outputs the feature maps are."""
        return self.get("module", idx)


class FeatureExtractor(nn.Module):
    """timm's ``features_only``: returns the feature map after each stage listed in ``feature_info``
    (``out_indices``: which, negative counting from the end; one out of range is a :class:`ConfigError`)."""

    def __init__(self, model: ConvNet, out_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        n = len(model.feature_info)
        if out_indices is None:
            out_indices = tuple(range(n))
        if not out_indices or any(not -n <= i < n for i in out_indices):
            raise ConfigError(f"out_indices must lie in [-{n}, {n}) ({n} feature maps), got {tuple(out_indices)}")
        out_indices = tuple(i % n for i in out_indices)
        last = max(model.stage_names.index(model.feature_info[i]["module"]) for i in out_indices)
        self.stage_names = model.stage_names[: last + 1]
        for name in self.stage_names:
            self.add_module(name, getattr(model, name))
        self.out_modules = [model.feature_info[i]["module"] for i in out_indices]
        self.feature_info = FeatureInfo(dict(model.feature_info[i]) for i in out_indices)
        self.default_cfg = getattr(model, "default_cfg", None)
        self._check = model.check_input

    def channels(self) -> list[int]:
        """Channels of each returned feature map."""
        return self.feature_info.channels()

    def reduction(self) -> list[int]:
        """Stride (relative to the input) of each returned feature map."""
        return self.feature_info.reduction()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._check(x)
        out = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_modules:
                out.append(x)
        return out
