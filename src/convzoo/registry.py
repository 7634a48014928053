"""The model registry: every architecture registers its builders here with a default configuration."""

from __future__ import annotations

import difflib
import fnmatch
import types
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints

from torch import nn

from .errors import ConfigError, UnknownModelError


@dataclass(frozen=True)
class ModelCfg:
    """What a registered model expects: input size, preprocessing, and where its first and last layers are.

    ``preprocessing`` is Keras' mode name: ``'tf'`` (scale to [-1, 1]), ``'caffe'`` (BGR, ImageNet mean
    subtracted, no scaling) or ``'torch'`` (ImageNet mean/std).
    """

    name: str
    family: str
    reference: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    min_input_size: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 1000
    preprocessing: str = "torch"
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    first_conv: str = ""
    classifier: str = "fc"
    drop_rate: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def as_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict (JSON-friendly)."""
        return asdict(self)


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    cfg: ModelCfg


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, builder: Callable[..., nn.Module], **cfg: Any) -> None:
    """Register ``builder`` under ``name``; ``cfg`` fills a :class:`ModelCfg` (``kwargs`` go to the builder)."""
    if name in _REGISTRY:
        raise ConfigError(f"model {name!r} is registered twice")
    _REGISTRY[name] = _Entry(builder, ModelCfg(name=name, **cfg))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``'*xception*'``), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.4)
        hint = f"; closest: {', '.join(close)}" if close else f"; see `convzoo list` for the {len(_REGISTRY)} models"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def get_model_cfg(name: str) -> ModelCfg:
    """The default configuration of a registered model."""
    return _entry(name).cfg


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
    """Build a registered model.

    Keras-style: ``include_top=False`` drops the classifier; ``pooling`` is then ``None`` (feature maps),
    ``'avg'`` or ``'max'`` (a pooled vector). timm-style: ``num_classes``, ``drop_rate``,
    ``features_only`` with ``out_indices``. ``input_size`` (H, W) sets the size recorded in ``default_cfg``.
    ``weights``: a weights file, checkpoint or ``'imagenet'``, loaded with :func:`convzoo.load_weights`.
    """
    entry = _entry(name)
    cfg = entry.cfg
    if pooling not in (None, "avg", "max"):
        raise ConfigError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if num_classes is None:
        num_classes = cfg.num_classes
    if num_classes < 0:
        raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
    global_pool = pooling or "avg"
    if not include_top:
        num_classes = 0
        global_pool = pooling or ""
    if input_size is not None:
        h, w = (int(v) for v in input_size)
        if h < cfg.min_input_size[1] or w < cfg.min_input_size[2]:
            raise ConfigError(f"{name} needs inputs of at least {cfg.min_input_size[1]}x{cfg.min_input_size[2]}, "
                              f"got input_size {h}x{w}")
        cfg = replace(cfg, input_size=(in_chans, h, w))
    cfg = replace(cfg, num_classes=num_classes, input_size=(in_chans, *cfg.input_size[1:]),
                  min_input_size=(in_chans, *cfg.min_input_size[1:]))
    kwargs = {**cfg.kwargs, **variant_args}
    try:
        model = entry.builder(num_classes=num_classes, in_chans=in_chans, global_pool=global_pool,
                              drop_rate=cfg.drop_rate if drop_rate is None else drop_rate, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{name}: {e}") from None
    model.default_cfg = cfg
    model.pretrained_cfg = cfg
    if weights is not None:
        from .weights import load_weights

        load_weights(model, weights)
    if features_only:
        from .models.base import FeatureExtractor

        return FeatureExtractor(model, out_indices)
    return model


def model_kwargs_from_json(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn JSON values into the types the builder of model ``name`` declares: lists into tuples, objects
    into the dataclasses of its tables (Xception's ``Block``, ResNet's ``Stage``)."""
    if not kwargs:
        return {}
    builder = _entry(name).builder
    hints = get_type_hints(builder.__init__ if isinstance(builder, type) else builder)
    return {k: _from_json(v, hints.get(k, Any)) for k, v in kwargs.items()}


def _from_json(value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for arg in get_args(hint):
            if isinstance(value, (list, tuple)) and get_origin(arg) in (tuple, list):
                return _from_json(value, arg)
            if isinstance(value, dict) and is_dataclass(arg):
                return _from_json(value, arg)
        return value
    if isinstance(value, dict) and is_dataclass(hint):
        field_hints = get_type_hints(hint)
        unknown = set(value) - set(field_hints)
        if unknown:
            raise ConfigError(f"{hint.__name__} has no field {', '.join(sorted(unknown))}; "
                              f"fields: {', '.join(field_hints)}")
        return hint(**{k: _from_json(v, field_hints[k]) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        args = get_args(hint)
        if origin in (tuple, list) and args and (args[-1] is Ellipsis or origin is list):
            items = [_from_json(v, args[0]) for v in value]
        elif origin is tuple and args:
            items = [_from_json(v, args[i] if i < len(args) else Any) for i, v in enumerate(value)]
        else:
            items = [_from_json(v, Any) for v in value]
        return items if origin is list else tuple(items)
    return value
