"""The model registry: every model of every family listed in :data:`convzoo.models.FAMILIES`, with its
configuration and its published weight records, and building a registered model without weights
(:func:`convzoo.create_model`, in :mod:`convzoo.factory`, also loads them)."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import replace
from typing import Any, get_type_hints

from torch import nn

from .errors import ConfigError, UnknownModelError
from .models import FAMILIES
from .models.spec import Family, KeyLayout, ModelCfg, WeightRecord
from .utils.typed import coerce

__all__ = ["ModelCfg", "RECORDS", "build_model", "families", "family_of", "get_model_cfg", "key_layouts",
           "list_models", "list_records", "model_kwargs_from_json"]

# What build_model itself takes; every other keyword goes to the family's builder.
_BUILD_ARGS = ("num_classes", "in_chans", "include_top", "pooling", "input_size", "drop_rate")
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


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``'*xception*'``), sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


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


def build_model(name: str, num_classes: int | None = None, in_chans: int = 3, include_top: bool = True,
                pooling: str | None = None, input_size: tuple[int, int] | None = None,
                drop_rate: float | None = None, **variant_args: Any) -> nn.Module:
    """Build registered model ``name`` with fresh weights (see :func:`convzoo.create_model` for the
    arguments); its ``default_cfg`` (also ``pretrained_cfg``) is the registered configuration with the
    classes and input size it was built for. Raises :class:`ConfigError` for invalid arguments."""
    cfg = get_model_cfg(name)
    if pooling not in (None, "avg", "max"):
        raise ConfigError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    num_classes = cfg.num_classes if num_classes is None else num_classes
    if num_classes < 0:
        raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
    global_pool = pooling or "avg"
    if not include_top:
        num_classes, global_pool = 0, pooling or ""
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
    return model


def model_kwargs_from_json(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Model arguments read from JSON (a recipe's ``model_kwargs``, a checkpoint's ``model_args``) as the
    types :func:`build_model` and the builder of model ``name`` declare: lists become tuples, objects the
    dataclasses of its tables (Xception's ``Block``, ResNet's ``Stage``). An unknown name or a value of the
    wrong type is a :class:`ConfigError` naming it."""
    cfg = get_model_cfg(name)
    own = get_type_hints(build_model)
    build = {k: coerce(v, own[k], k) for k, v in kwargs.items() if k in _BUILD_ARGS}
    return {**build, **_check_builder_args(cfg, {k: v for k, v in kwargs.items() if k not in _BUILD_ARGS})}
