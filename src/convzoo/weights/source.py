"""A weights file read once, whatever wrote it, and the head it holds (:func:`file_head`): what
``create_model(name, weights=FILE)`` builds before loading, and what the inference verbs ask before building.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from ..registry import build_model, get_model_cfg
from . import formats
from .checkpoint import read_checkpoint
from .keras_h5 import KerasFile, read_keras
from .keras_map import guess_keras_file, keras_placements
from .keras_model import KerasModel, keras_model
from .mapping import FileHead
from .torch_state import TorchState, read_safetensors, read_torch, rename_keys, unwrap_state


@dataclass
class WeightsFile:
    """The weights file at ``path`` (format ``format``, see :func:`~.formats.detect_format`) read: a Keras
    file's layers (``keras``) or a state dict (``state``; a convzoo checkpoint's as saved)."""

    path: Path
    format: str
    keras: KerasFile | None = None
    state: TorchState | None = None


def read_weights(path: str | Path) -> WeightsFile:
    """Read the weights at ``path`` (a file, or a folder holding a convzoo checkpoint); the format comes from
    the bytes. Raises :class:`WeightsError` (and :class:`~convzoo.errors.UnsafeFileError` for a pickle that
    would run code)."""
    fmt, file = formats.detect_format(path)
    if fmt in (formats.KERAS_H5, formats.KERAS_ARCHIVE):
        return WeightsFile(file, fmt, keras=read_keras(file, archive=fmt == formats.KERAS_ARCHIVE))
    if fmt == formats.TORCH:
        return WeightsFile(file, fmt, state=read_torch(file))
    tensors, _ = read_safetensors(file)
    state = TorchState(tensors) if fmt == formats.CONVZOO else unwrap_state(tensors, file)
    return WeightsFile(file, fmt, state=state)


def keras_structure(file: KerasFile, model: nn.Module) -> KerasModel:
    """The model around the application in the Keras ``file``, as ``model``'s family places it (see
    :mod:`.keras_model`); errors name the file, and for another model's file only which model it looks like."""
    try:
        return keras_model(file, partial(keras_placements, model=model), model.default_cfg.classifier)
    except WeightsError as exc:
        name, guess = model.default_cfg.name, guess_keras_file(file.root)
        if guess not in (None, name):  # another model's file: what is around it is beside the point
            raise WeightsError(f"{file.path} does not fit {name} (it looks like {guess} weights); load it into "
                               f"{guess}") from None
        raise WeightsError(f"{file.path}: {exc}") from None


def torch_head(state: TorchState, classifier: str) -> FileHead:
    """The classifier a state dict holds under ``classifier`` (a model's classifier path) once its keys are
    renamed to convzoo's; ``classes`` 0 when it holds none."""
    renamed = {new: old for old, new in rename_keys(list(state.tensors)).items()}
    old = renamed.get(f"{classifier}.weight")
    if old is None:
        return FileHead(0)
    return FileHead(int(state.tensors[old].shape[0]), layer=old.rpartition(".")[0])


def _checkpoint_head(file: WeightsFile, classifier: str) -> FileHead:
    """A convzoo checkpoint's head: its classifier, and the pooling and dropout it was built with."""
    head = torch_head(file.state, classifier)
    args = read_checkpoint(file.path).model_args
    # global_pool; 'pooling' in checkpoints written before it was recorded
    pooling = "" if args.get("include_top") is False else args.get("global_pool", args.get("pooling", "avg"))
    dropout = args.get("drop_rate")
    return FileHead(head.classes, pooling or None, None if dropout is None else float(dropout), None, head.layer)


def file_head(weights: str | Path | WeightsFile, model: str) -> FileHead | None:
    """The head the weights file holds for registered model ``model``, without building the model: its
    classes (0 when it holds no classifier), and where the file says them, the pooling, dropout rate and
    activation before and in it. None for ``'imagenet'`` specs (published files: their record says).
    Raises the errors of :func:`read_weights`, and :class:`WeightsError` for a Keras head convzoo does not
    have."""
    if isinstance(weights, str) and weights.split(":", 1)[0] == "imagenet":
        return None
    file = weights if isinstance(weights, WeightsFile) else read_weights(weights)
    cfg = get_model_cfg(model)
    if file.keras is not None:
        with torch.device("meta"):
            built = build_model(model)
        return keras_structure(file.keras, built).head
    if file.format == formats.CONVZOO:
        return _checkpoint_head(file, cfg.classifier)
    return torch_head(file.state, cfg.classifier)
