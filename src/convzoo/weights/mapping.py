"""What every importer produces: tensors under convzoo state-dict keys, each with where it came from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

import torch


class Tensor(NamedTuple):
    """A tensor ready for a convzoo key, and how to name its origin in messages
    (``Keras 'block1_conv1'`` or ``'layer1.0.conv1.weight'``)."""

    value: torch.Tensor
    origin: str


@dataclass
class Mapped:
    """An importer's result: ``tensors`` by convzoo key, ``unplaced`` origins that fit no convzoo module,
    ``mismatched`` origins whose arrays do not fit their module (with the reason), the source ``layout``,
    the model the file most likely belongs to (``guess``, for error messages) and ``notes`` for the report.
    ``modules``: source layer name -> convzoo module path (Keras files); ``batchnorm``: convzoo BatchNorm
    path -> (eps, torch momentum) read from the file's own model configuration."""

    layout: str
    tensors: dict[str, Tensor] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    guess: str | None = None
    modules: dict[str, str] = field(default_factory=dict)
    batchnorm: dict[str, tuple[float, float]] = field(default_factory=dict)


def one_line(exc: BaseException) -> str:
    """An exception as ``Type: message`` on one line (h5py and torch messages span several)."""
    return re.sub(r"\s+", " ", f"{type(exc).__name__}: {exc}").strip()
