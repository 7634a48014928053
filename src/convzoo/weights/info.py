"""What a weight file holds, for ``convzoo weights info``: its format and layout, how many tensors and
values, the registered model it most likely belongs to, the head it holds and, for a Keras model that wraps
the application, the nesting and the preprocessing layers; for a training checkpoint the entry and wrapper
prefixes the state dict was taken from; for a convzoo checkpoint, its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from ..registry import build_model, get_model_cfg, list_models
from . import formats
from .checkpoint import read_checkpoint
from .keras_h5 import KerasFile
from .keras_map import guess_keras_file
from .source import file_head, keras_structure, read_weights, torch_head
from .torch_state import detect_layout, guess_torch_model


def _describe_keras(file: KerasFile) -> dict[str, Any]:
    arrays = [a for layer in file.root.weighted() for _, a in layer.weights]
    info: dict[str, Any] = dict(layout=f"keras ({file.layout})", layers=len(file.root.weighted()),
                                tensors=len(arrays), values=int(sum(a.size for a in arrays)), model=guess_keras_file(file.root))
    if info["model"] is not None:
        try:
            with torch.device("meta"):
                structure = keras_structure(file, build_model(info["model"]))
        except WeightsError as exc:  # a head convzoo does not have: said, the rest still shown
            info["notes"] = [str(exc)]
            return info
        info.update(nesting=structure.nesting, head=structure.head.as_dict(),
                    preprocessing_layers=structure.preprocessing_layers, notes=structure.notes)
    return info


def describe(path: str | Path) -> dict[str, Any]:
    """``file``, ``format``, ``layout``, ``tensors``, ``values`` and the likely ``model`` (None when no family
    recognises the file); for a recognised file its ``head`` (:class:`~.mapping.FileHead` as a dict). Keras
    files add ``layers``, ``nesting`` (the models from the outer one down to the application, empty when
    the file is the application), ``preprocessing_layers`` (the classes before the application) and
    ``notes`` (a head convzoo does not have is said there); torch files the checkpoint ``container`` and
    removed ``prefixes``; convzoo checkpoints their ``model_args``, number of ``class_names``, ``extra`` and
    ``convzoo_version``. Raises :class:`~convzoo.errors.WeightsError` for a file it cannot read."""
    file = read_weights(path)
    info: dict[str, Any] = {"file": str(file.path), "format": file.format}
    if file.keras is not None:
        info.update(_describe_keras(file.keras))
        return info
    state = file.state
    info.update(layout=detect_layout(list(state.tensors)), tensors=len(state.tensors),
                values=int(sum(t.numel() for t in state.tensors.values())), model=guess_torch_model(state.tensors),
                container=state.container, prefixes=state.prefixes)
    if file.format == formats.CONVZOO:
        ck = read_checkpoint(file.path)
        info.update(layout="convzoo checkpoint", model=ck.model, model_args=ck.model_args,
                    class_names=len(ck.class_names) if ck.class_names else None, extra=ck.extra,
                    convzoo_version=ck.convzoo_version)
    if info["model"] is not None:
        info["head"] = file_head(file, info["model"]).as_dict()
    else:  # no family recognises it: a classifier under any registered model's classifier path
        paths = sorted({get_model_cfg(name).classifier for name in list_models()})
        info["head"] = next((h.as_dict() for h in (torch_head(state, p) for p in paths) if h.classes), None)
    return info
