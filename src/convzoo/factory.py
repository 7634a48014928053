"""``create_model(name, ..., weights=...)``: build a registered model, load weights into it, and (timm's
``features_only``) wrap it as a feature extractor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .models.base import FeatureExtractor
from .registry import build_model
from .weights import load_weights

__all__ = ["create_model"]


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int = 3,
    include_top: bool = True,
    pooling: str | None = None,
    input_size: tuple[int, int] | None = None,
    drop_rate: float | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    weights: str | Path | None = None,
    **variant_args: Any,
) -> nn.Module:
    """Build a registered model (in training mode, as ``nn.Module`` constructors do).

    Keras-style: ``include_top=False`` drops the classifier; ``pooling`` is then ``None`` (feature maps,
    (N, C, H, W)), ``'avg'`` or ``'max'`` (a pooled vector (N, C)). timm-style: ``num_classes``,
    ``drop_rate``, ``features_only`` with ``out_indices`` (stages to return; negative counts from the end).
    ``input_size`` (H, W) sets the size recorded in ``default_cfg``. ``variant_args`` go to the family's
    builder (e.g. ``aux_logits=True``), each checked against the type it declares. ``weights``: a weights
    file, checkpoint or ``'imagenet'``, loaded with :func:`convzoo.load_weights` before any feature
    extractor is built. Raises :class:`~convzoo.errors.UnknownModelError`, :class:`~convzoo.errors.ConfigError`
    and, while loading, the errors of :func:`convzoo.load_weights`.
    """
    model = build_model(name, num_classes=num_classes, in_chans=in_chans, include_top=include_top, pooling=pooling,
                        input_size=input_size, drop_rate=drop_rate, **variant_args)
    if weights is not None:
        load_weights(model, weights)
    if features_only:
        return FeatureExtractor(model, out_indices)
    return model
