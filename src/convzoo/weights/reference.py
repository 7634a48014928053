"""Keras references for ``convzoo verify-import``: building the ``keras.applications`` model a registered
model reproduces (``ModelCfg.exact_reference('keras')``) and loading a Keras weight file into it with Keras' own loader.

Keras is an optional dependency: :func:`require_keras` turns its absence into one :class:`ConvzooError` line.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConvzooError, WeightsError
from . import formats
from .mapping import one_line


def require_keras() -> Any:
    """The ``keras`` module, or a :class:`ConvzooError` saying it is not installed. Keras 3's backend defaults
    to torch here (``KERAS_BACKEND`` unset): convzoo runs on torch and TensorFlow need not be installed."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as exc:
        raise ConvzooError(f"Keras is not installed ({one_line(exc)}); verify-import needs it: "
                           "pip install keras (KERAS_BACKEND=torch)") from None
    return keras


def build_keras_reference(app: str, classes: int) -> Any:
    """``keras.applications.<app>`` with random weights: with a classifier of ``classes`` (no softmax), or,
    for 0 classes, without one and average-pooled, as ``convzoo.create_model(..., include_top=False,
    pooling='avg')``."""
    keras = require_keras()
    builder = getattr(keras.applications, app)
    if classes:
        return builder(weights=None, classes=classes, classifier_activation=None)
    return builder(weights=None, include_top=False, pooling="avg")


@contextlib.contextmanager
def _named(path: Path, suffix: str) -> Iterator[Path]:
    """``path`` under a name ending in ``suffix`` (Keras picks its loader by the suffix): itself, or a link."""
    name = path.name
    if name.endswith(suffix) and not (suffix == ".h5" and name.endswith(".weights.h5")):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="convzoo-") as tmp:
        link = Path(tmp) / f"weights{suffix}"
        link.symlink_to(path.resolve())
        yield link


def load_into_keras(keras_model: Any, path: Path, fmt: str, layout: str) -> None:
    """Load a Keras file (format ``fmt``, layout ``'legacy'`` or ``'keras3'``) with Keras' own loader;
    Keras' refusal is one :class:`WeightsError` line."""
    if fmt == formats.KERAS_ARCHIVE:
        suffix = ".keras"
    else:
        suffix = ".weights.h5" if layout == "keras3" else ".h5"
    with _named(path, suffix) as named:
        try:
            keras_model.load_weights(str(named))
        except (ValueError, KeyError, OSError, TypeError, AttributeError) as exc:
            raise WeightsError(f"{path}: Keras' own loader refuses it ({one_line(exc)[:300]})") from None
