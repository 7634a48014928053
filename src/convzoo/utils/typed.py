"""Values of a declared type from JSON values or Python values: the one coercion used by recipes, model
arguments read back from checkpoints, and anything else convzoo reads from JSON or the command line.

:func:`coerce` follows a type hint: ``bool``, ``int``, ``float`` (finite only), ``str``, ``Literal``,
``X | Y`` and ``X | None`` (the first alternative that fits), ``tuple[X, ...]``, ``tuple[X, Y]``,
``list[X]``, ``dict`` and dataclasses (from a JSON object, recursively), ``Any``. A value that fits none is one
:class:`~convzoo.errors.ConfigError` line naming the field, what it expects and what it got.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

from ..errors import ConfigError

_MAX_SHOWN = 60


class _Mismatch(Exception):
    """Internal: the value does not fit the hint."""


def coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` as type ``hint`` (see the module docstring); :class:`ConfigError` naming ``name`` if it
    does not fit."""
    try:
        return _coerce(value, hint)
    except _Mismatch as exc:
        shown = repr(value)
        shown = shown if len(shown) <= _MAX_SHOWN else shown[:_MAX_SHOWN - 3] + "..."
        why = f" ({exc.args[0]})" if exc.args else ""
        raise ConfigError(f"{name}: expected {describe(hint)}, got {shown}{why}") from None


def describe(hint: Any) -> str:
    """What ``hint`` accepts, in words ('an integer', 'a finite number or none', ...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "any value"
    if origin in (Union, types.UnionType):
        rest = [describe(a) for a in args if a is not type(None)]
        return " or ".join(rest) + (" or none" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"{len(args)} values ({', '.join(describe(a) for a in args)})"
    if origin is list:
        return f"a list of {_plural(args[0]) if args else 'values'}"
    if origin is dict or hint is dict:
        return "a JSON object"
    if dataclasses.is_dataclass(hint):
        return f"an object with fields {', '.join(f.name for f in dataclasses.fields(hint))}"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _plural(hint: Any) -> str:
    return {bool: "booleans", int: "integers", float: "finite numbers", str: "strings"}.get(hint, describe(hint))


def _coerce(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for alternative in args:
            if alternative is type(None):
                continue
            try:
                return _coerce(value, alternative)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise _Mismatch
    if origin in (tuple, list):
        return _sequence(value, origin, args)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        key_hint, value_hint = args if args else (Any, Any)
        return {_coerce(k, key_hint): _coerce(v, value_hint) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _dataclass(value, hint)
    return _scalar(value, hint)


def _sequence(value: Any, origin: type, args: tuple[Any, ...]) -> Any:
    if not isinstance(value, (list, tuple)):
        raise _Mismatch
    if origin is list or (len(args) == 2 and args[1] is Ellipsis) or not args:
        item = args[0] if args else Any
        items = [_coerce(v, item) for v in value]
    else:
        if len(value) != len(args):
            raise _Mismatch
        items = [_coerce(v, a) for v, a in zip(value, args)]
    return items if origin is list else tuple(items)


def _dataclass(value: Any, hint: type) -> Any:
    if isinstance(value, hint):
        return value
    if not isinstance(value, dict):
        raise _Mismatch
    hints = typing.get_type_hints(hint)
    fields = {f.name for f in dataclasses.fields(hint)}
    if set(value) - fields:
        raise _Mismatch(f"{hint.__name__} has no field {', '.join(sorted(set(value) - fields))}")
    try:
        return hint(**{k: _coerce(v, hints[k]) for k, v in value.items()})
    except TypeError:
        raise _Mismatch from None


def _scalar(value: Any, hint: Any) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if isinstance(value, bool):
        raise _Mismatch
    if hint is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise _Mismatch
