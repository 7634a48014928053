"""The model registry: every model of every family listed in :data:`convzoo.models.FAMILIES`, with its
configuration and its published weight records, and building a registered model without weights
(:func:`convzoo.create_model`, in :mod:`convzoo.factory`, also loads them)."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import replace
from typing import Any, Sequence, get_type_hints

from torch import nn

from .errors import ConfigError, UnknownModelError
from .models import FAMILIES
from .models.spec import Family, KeyLayout, ModelCfg, WeightRecord
from .utils.typed import coerce

__all__ = ["ModelCfg", "RECORDS", "build_model", "families", "family_of", "get_model_cfg", "key_layouts",
           "list_models", "list_records", "model_kwargs_from_json"]

# What build_model itself takes; every other keyword goes to the family's builder.
_BUILD_ARGS = ("num_classes", "in_chans", "include_top", "pooling", "input_size", "drop_rate", "global_pool",
               "classifier_activation")
POOLS = ("avg", "max", "")
# Keras' classifier_activation values: None and 'linear' give logits.
ACTIVATIONS = (None, "linear", "softmax")
# Builder arguments that build_model sets from its own.
_SET_BY_BUILD = ("num_classes", "in_chans", "global_pool", "drop_rate")


def _collect(all_families: tuple[Family, ...]) -> dict[str, ModelCfg]:
    table: dict[str, ModelCfg] = {}
    for family in all_families:
        for cfg in family.models:
            if cfg.name in table:
                raise ConfigError(f"model {cfg.name!r} is registered twice")
            table[cfg.name] = cfg
    return table


_MODELS: dict[str, ModelCfg] = _collect(FAMILIES)
_BY_BUILDER: dict[type, Family] = {family.builder: family for family in FAMILIES}
# The published weight files by registered model, in each family's order: the first record of a model's list
# that fits is what ``weights='imagenet'`` loads, ``'imagenet:SOURCE'`` picks by source.
RECORDS: dict[str, tuple[WeightRecord, ...]] = {
    name: recs for name in _MODELS if (recs := tuple(r for f in FAMILIES for r in f.records if r.model == name))}


def _patterns(filters: str | Sequence[str]) -> list[str]:
    return [filters] if isinstance(filters, str) else list(filters)


def list_models(filter: str | Sequence[str] = "*", exclude_filters: str | Sequence[str] = (),
                pretrained: bool = False) -> list[str]:
    """Registered model names, sorted, as timm's ``list_models``: those matching any of the shell-style
    patterns ``filter`` (e.g. ``'*xception*'`` or ``['*xception*', 'resnet*']``) and none of
    ``exclude_filters``; with ``pretrained``, only models with published weights."""
    include = [p or "*" for p in _patterns(filter)] or ["*"]  # timm's default filter is ''
    exclude = [p for p in _patterns(exclude_filters) if p]
    return sorted(n for n in _MODELS if any(fnmatch.fnmatch(n, p) for p in include)
                  and not any(fnmatch.fnmatch(n, p) for p in exclude) and (not pretrained or n in RECORDS))


def get_model_cfg(name: str) -> ModelCfg:
    """The registered configuration of model ``name``; :class:`UnknownModelError` (naming the closest
    names) when there is none."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.4)
        hint = f"; closest: {', '.join(close)}" if close else f"; see `convzoo list` for the {len(_MODELS)} models"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return _MODELS[name]


def families() -> tuple[Family, ...]:
    """Every registered family."""
    return FAMILIES


def family_of(model: nn.Module) -> Family | None:
    """The family whose builder made ``model`` (by its class), or None."""
    return next((_BY_BUILDER[c] for c in type(model).__mro__ if c in _BY_BUILDER), None)


def key_layouts() -> tuple[KeyLayout, ...]:
    """The state-dict layouts of other libraries that some family can read."""
    return tuple(layout for f in FAMILIES if f.torch is not None for layout in f.torch.layouts)


def list_records(model: str | None = None) -> list[WeightRecord]:
    """Every published weight record, or those of registered model ``model``."""
    return [r for name, records in RECORDS.items() if model in (None, name) for r in records]


def _builder_hints(cfg: ModelCfg) -> dict[str, Any]:
    hints = get_type_hints(cfg.builder.__init__)
    return {k: v for k, v in hints.items() if k not in ("return", *_SET_BY_BUILD)}


def _check_builder_args(cfg: ModelCfg, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` for ``cfg``'s builder, each coerced to the type it declares; an unknown name or a value of
    the wrong type is a :class:`ConfigError` naming it."""
    hints = _builder_hints(cfg)
    unknown = sorted(set(args) - set(hints))
    if unknown:
        raise ConfigError(f"{cfg.name} takes no argument {', '.join(unknown)}; its builder's arguments: "
                          f"{', '.join(hints)}")
    return {k: coerce(v, hints[k], k) for k, v in args.items()}


def _head(include_top: bool, pooling: str | None, global_pool: str | None, num_classes: int,
          classifier_activation: str | None) -> tuple[int, str, str | None]:
    """(classes, global pooling, activation) from Keras' and timm's head arguments (see :func:`build_model`)."""
    for value, allowed, what in ((pooling, (None, "avg", "max"), "pooling"), (global_pool, (None, *POOLS), "global_pool"),
                                 (classifier_activation, ACTIVATIONS, "classifier_activation")):
        if value not in allowed:
            raise ConfigError(f"{what} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    if num_classes < 0:
        raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
    if not include_top:  # Keras: no classifier, pooling None (feature maps), 'avg' or 'max'
        return 0, pooling or "", None
    pool = "avg" if global_pool is None else global_pool  # Keras ignores pooling when the top is included
    if pool == "" and num_classes:
        raise ConfigError("global_pool='' (no pooling) needs num_classes=0: the classifier takes pooled features")
    return num_classes, pool, None if classifier_activation == "linear" else classifier_activation


def build_model(name: str, num_classes: int | None = None, in_chans: int = 3, include_top: bool = True,
                pooling: str | None = None, input_size: tuple[int, int] | None = None,
                drop_rate: float | None = None, global_pool: str | None = None,
                classifier_activation: str | None = None, **variant_args: Any) -> nn.Module:
    """Build registered model ``name`` with fresh weights (see :func:`convzoo.create_model` for the
    arguments); its ``default_cfg`` (also ``pretrained_cfg``) is the registered configuration with the
    classes and input size it was built for. Raises :class:`ConfigError` for invalid arguments.

    The head follows Keras and timm: ``include_top=False`` drops the classifier and pools by ``pooling``
    (None: feature maps); with the top, ``pooling`` is ignored as Keras ignores it, and timm's
    ``global_pool`` ('avg', the default, 'max', or '' with ``num_classes=0``) chooses the pooling.
    ``classifier_activation`` (Keras): None or 'linear' give logits, 'softmax' probabilities."""
    cfg = get_model_cfg(name)
    num_classes, global_pool, activation = _head(include_top, pooling, global_pool,
                                                 cfg.num_classes if num_classes is None else num_classes,
                                                 classifier_activation)
    if input_size is not None:
        h, w = (int(v) for v in input_size)
        if h < cfg.min_input_size[1] or w < cfg.min_input_size[2]:
            raise ConfigError(f"{name} needs inputs of at least {cfg.min_input_size[1]}x{cfg.min_input_size[2]}, "
                              f"got input_size {h}x{w}")
        cfg = replace(cfg, input_size=(in_chans, h, w))
    cfg = replace(cfg, num_classes=num_classes, input_size=(in_chans, *cfg.input_size[1:]),
                  min_input_size=(in_chans, *cfg.min_input_size[1:]))
    kwargs = {**cfg.kwargs, **_check_builder_args(cfg, variant_args)}
    model = cfg.builder(num_classes=num_classes, in_chans=in_chans, global_pool=global_pool,
                        drop_rate=cfg.drop_rate if drop_rate is None else drop_rate, **kwargs)
    model.default_cfg = model.pretrained_cfg = cfg
    model.classifier_activation = activation
    return model


def model_kwargs_from_json(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Model arguments read from JSON (a recipe's ``model_kwargs``, a checkpoint's ``model_args``) as the
    types :func:`build_model` and the builder of model ``name`` declare: lists become tuples, objects the
    dataclasses of its tables (Xception's ``Block``, ResNet's ``Stage``). An unknown name or a value of the
    wrong type is a :class:`ConfigError` naming it."""
    cfg = get_model_cfg(name)
    own = get_type_hints(build_model)
    if "pooling" in kwargs and kwargs.get("include_top", True):  # checkpoints before global_pool was recorded
        kwargs = {**{k: v for k, v in kwargs.items() if k != "pooling"}, "global_pool": kwargs["pooling"]}
    build = {k: coerce(v, own[k], k) for k, v in kwargs.items() if k in _BUILD_ARGS}
    return {**build, **_check_builder_args(cfg, {k: v for k, v in kwargs.items() if k not in _BUILD_ARGS})}
