"""What every convzoo network shares: the classifier head, input checks and feature extraction."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputShapeError


class ConvNet(nn.Module):
    """Base class: ``forward_features`` runs the modules named in ``stage_names`` in order, then
    ``forward_head`` pools and classifies. Subclasses set ``stage_names``, ``feature_info``, ``num_features``
    and call :meth:`_init_head`.
    """

    stage_names: list[str]
    feature_info: list[dict[str, Any]]
    num_features: int
    min_size: int = 32

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

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputShapeError` when ``x`` is not (N, in_chans, H, W) with H, W at least ``min_size``."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise InputShapeError(f"{type(self).__name__} expects input of shape (N, {self.in_chans}, H, W), "
                                  f"got {tuple(x.shape)}")
        if x.shape[-2] < self.min_size or x.shape[-1] < self.min_size:
            raise InputShapeError(f"{type(self).__name__} needs inputs of at least {self.min_size}x{self.min_size}, "
                                  f"got {x.shape[-2]}x{x.shape[-1]}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature maps before global pooling."""
        self.check_input(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pooling, dropout and classifier (``pre_logits=True`` stops after pooling)."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        elif self.global_pool == "max":
            x = x.amax((2, 3))
        if pre_logits:
            return x
        return self.fc(self.head_drop(x))

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
        if hasattr(self, "default_cfg"):
            from dataclasses import replace

            self.default_cfg = self.pretrained_cfg = replace(self.default_cfg, num_classes=num_classes)


class FeatureExtractor(nn.Module):
    """timm's ``features_only``: returns the feature map after each stage listed in ``feature_info``."""

    def __init__(self, model: ConvNet, out_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        n = len(model.feature_info)
        out_indices = tuple(range(n)) if out_indices is None else tuple(i % n for i in out_indices)
        if any(not -n <= i < n for i in out_indices):
            raise ConfigError(f"out_indices must lie in [-{n}, {n}), got {out_indices}")
        last = max(model.stage_names.index(model.feature_info[i]["module"]) for i in out_indices)
        self.stage_names = model.stage_names[: last + 1]
        for name in self.stage_names:
            self.add_module(name, getattr(model, name))
        self.out_modules = [model.feature_info[i]["module"] for i in out_indices]
        self.feature_info = [model.feature_info[i] for i in out_indices]
        self.default_cfg = getattr(model, "default_cfg", None)
        self._check = model.check_input

    def channels(self) -> list[int]:
        """Channels of each returned feature map."""
        return [f["num_chs"] for f in self.feature_info]

    def reduction(self) -> list[int]:
        """Stride (relative to the input) of each returned feature map."""
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check(x)
        out = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_modules:
                out.append(x)
        return out
