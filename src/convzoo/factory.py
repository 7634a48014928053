"""``create_model(name, ..., weights=...)``: build a registered model (with the head of the weights file when
it has one), load the weights into it, and (timm's ``features_only``) wrap it as a feature extractor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .errors import ConfigError
from .models.base import FeatureExtractor
from .registry import build_model
from .weights import LoadReport, load_weights
from .weights.mapping import FileHead
from .weights.source import WeightsFile, file_head, read_weights

__all__ = ["build_with_weights", "create_model"]

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
    global_pool: str | None = None,
    pretrained: bool = False,
    **variant_args: Any,
) -> nn.Module:
    """Build a registered model (in training mode, as ``nn.Module`` constructors do).

    Keras-style: ``include_top=False`` drops the classifier; ``pooling`` is then ``None`` (feature maps,
    (N, C, H, W)), ``'avg'`` or ``'max'`` (a pooled vector (N, C)); with the top ``pooling`` is ignored, as
    Keras ignores it, and ``classifier_activation`` (None or ``'linear'``: logits, ``'softmax'``) applies.
    timm-style: ``num_classes``, ``pretrained`` (True: ``weights='imagenet'``),
    ``global_pool`` (``'avg'``, ``'max'``, ``''`` for none), ``drop_rate``, ``features_only`` with
    ``out_indices`` (stages to return; negative counts from the end). ``input_size`` (H, W) sets the size
    recorded in ``default_cfg``. ``variant_args`` go to the family's builder (e.g. ``aux_logits=True``), each
    checked against the type it declares.

    ``weights``: a weights file, checkpoint or ``'imagenet'``, loaded with :func:`convzoo.load_weights` before
    any feature extractor is built. A file's head decides what is not given: without ``num_classes`` the
    model gets the file's classes (0, a model without classifier, for a file without one), and the file's
    pooling and dropout rate where it records them; an explicit ``num_classes`` that differs from the file's
    leaves the classifier unloaded, with a warning (fine-tuning). Raises
    :class:`~convzoo.errors.UnknownModelError`, :class:`~convzoo.errors.ConfigError` and, while loading, the
    errors of :func:`convzoo.load_weights`.
    """
    if pretrained:
        if weights is not None:
            raise ConfigError(f"pretrained=True loads the published weights; weights={weights!r} names others")
        weights = "imagenet"
    args = dict(num_classes=num_classes, in_chans=in_chans, include_top=include_top, pooling=pooling,
                input_size=input_size, drop_rate=drop_rate, global_pool=global_pool, **variant_args)
    if weights is None:
        model = build_model(name, **args)
    else:
        model, _ = build_with_weights(name, weights, **args)
    if features_only:
        return FeatureExtractor(model, out_indices)
    return model


def build_with_weights(name: str, weights: str | Path | WeightsFile, strict: bool = True, **kwargs: Any
                       ) -> tuple[nn.Module, LoadReport]:
    """Build registered model ``name`` for the weights file ``weights`` (read once) with the file's head where
    ``kwargs`` (the arguments of :func:`create_model`) leave it open, load the file into it (``strict`` as
    :func:`convzoo.load_weights`) and return the model and the :class:`LoadReport`."""
    if not (isinstance(weights, str) and weights.split(":", 1)[0] == "imagenet"):
        weights = weights if isinstance(weights, WeightsFile) else read_weights(weights)
        kwargs = _with_file_head(file_head(weights, name), kwargs)
    model = build_model(name, **kwargs)
    return model, load_weights(model, weights, strict=strict)


def _with_file_head(head: FileHead | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the file's classes, pooling and dropout rate where they leave them open."""
    if head is None or not kwargs.get("include_top", True):
        return kwargs
    out = dict(kwargs)
    if out.get("num_classes") is None:
        out["num_classes"] = head.classes
    own_head = out["num_classes"] == head.classes
    if head.pooling is not None and out.get("pooling") is None and out.get("global_pool") is None:
        out["global_pool"] = head.pooling
    if own_head and head.dropout is not None and out.get("drop_rate") is None:
        out["drop_rate"] = head.dropout
    return out


