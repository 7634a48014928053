"""What every importer produces: tensors under convzoo state-dict keys, each with where it came from, and
what the file says about the model around them (its head, its nesting, its wrappers)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch


@dataclass(frozen=True)
class FileHead:
    """The head a weights file holds: ``classes`` of its classifier (0: no classifier, the file holds
    features only), the global ``pooling`` before it (``'avg'``, ``'max'``; None when the file does not
    say), the ``dropout`` rate before the classifier and the classifier's ``activation`` (Keras files with a
    model configuration; None when the file does not say), and the file's name for the classifier
    (``layer``: a Keras layer or a state-dict key prefix)."""

    classes: int
    pooling: str | None = None
    dropout: float | None = None
    activation: str | None = None
    layer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The head as plain JSON values."""
        return asdict(self)

    def describe(self) -> str:
        """One phrase: ``5 classes ('dense'), avg pooling, dropout 0.2, softmax``."""
        if not self.classes:
            parts = ["no classifier"]
        else:
            parts = [f"{self.classes} classes" + (f" ({self.layer!r})" if self.layer else "")]
        parts += [f"{self.pooling} pooling"] if self.pooling else []
        parts += [f"dropout {self.dropout:g}"] if self.dropout is not None else []
        parts += [self.activation] if self.activation not in (None, "linear") else []
        return ", ".join(parts)


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
    path -> (eps, torch momentum) read from the file's own model configuration. ``head``: the file's head;
    ``nesting``: the Keras models from the file's outer model down to the application (empty when the file
    is the application itself); ``container`` and ``prefixes``: the checkpoint entry and the wrapper key
    prefixes a torch state dict was taken out of; ``preprocessing``: (mean, std) per RGB channel in 0..255
    pixel units folded from the file's own preprocessing layers (None when it has none) and
    ``preprocessing_layers`` their Keras class names."""

    layout: str
    tensors: dict[str, Tensor] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    guess: str | None = None
    modules: dict[str, str] = field(default_factory=dict)
    batchnorm: dict[str, tuple[float, float]] = field(default_factory=dict)
    head: FileHead | None = None
    nesting: list[str] = field(default_factory=list)
    container: str | None = None
    prefixes: list[str] = field(default_factory=list)
    preprocessing: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    preprocessing_layers: list[str] = field(default_factory=list)


def one_line(exc: BaseException) -> str:
    """An exception as ``Type: message`` on one line (h5py and torch messages span several)."""
    return re.sub(r"\s+", " ", f"{type(exc).__name__}: {exc}").strip()
