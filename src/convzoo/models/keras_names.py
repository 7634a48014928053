"""Keras' naming of layers the model code leaves unnamed, shared by the families' Keras mappings.

Keras names a layer without a name after its class, numbered in the order it creates them: ``conv2d``,
``conv2d_1``, ``conv2d_2``, ... (likewise ``batch_normalization_N``, ``add_N``). A published file lists its
layers in graph order, so the unnamed ones are matched by that number, never by their place in the file.
"""

from __future__ import annotations

import re
from typing import Sequence

from .spec import Placement

UNNAMED_CONV = re.compile(r"conv2d(?:_(\d+))?")
UNNAMED_BN = re.compile(r"batch_normalization(?:_(\d+))?")
UNNAMED_ADD = re.compile(r"add(?:_(\d+))?")


def creation_order(name: str, pattern: re.Pattern[str]) -> int:
    """The creation number of an unnamed layer (``conv2d`` is -1, ``conv2d_3`` is 3)."""
    m = pattern.fullmatch(name)
    return int(m.group(1)) if m and m.group(1) else -1


def in_creation_order(names: Sequence[str], pattern: re.Pattern[str]) -> list[str]:
    """The names matching ``pattern``, sorted by creation number."""
    return sorted((n for n in names if pattern.fullmatch(n)), key=lambda n: creation_order(n, pattern))


def place_in_order(names: Sequence[str], pattern: re.Pattern[str], slots: Sequence[str], what: str
                   ) -> tuple[list[Placement], list[str]]:
    """Pair the unnamed layers among ``names`` that match ``pattern``, in creation order, with the module
    paths ``slots`` in order. Returns the placements and one message per layer left over (``what`` names
    the slots: 'the model has 94 convolutions')."""
    ordered = in_creation_order(names, pattern)
    placed = [Placement(layer, slot) for layer, slot in zip(ordered, slots)]
    return placed, [f"Keras '{layer}' (the model has {len(slots)} {what})" for layer in ordered[len(slots):]]


def is_unnamed(name: str) -> bool:
    """Whether ``name`` is a default Conv2D or BatchNormalization name."""
    return bool(UNNAMED_CONV.fullmatch(name) or UNNAMED_BN.fullmatch(name))
