"""What a weight file holds, for ``convzoo weights info``: its format and layout, how many tensors and
values, the registered model it most likely belongs to and, for a convzoo checkpoint, its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import formats
from .checkpoint import read_checkpoint
from .keras_h5 import read_keras
from .keras_map import guess_keras_model
from .torch_state import detect_layout, guess_torch_model, read_safetensors, read_torch


def describe(path: str | Path) -> dict[str, Any]:
    """``file``, ``format``, ``layout``, ``tensors``, ``values`` and the likely ``model`` (None when no family
    recognises the file); Keras files add ``layers``, convzoo checkpoints their ``model_args``, number of
    ``class_names``, ``extra`` and ``convzoo_version``. Raises :class:`~convzoo.errors.WeightsError`."""
    fmt, file = formats.detect_format(path)
    info: dict[str, Any] = {"file": str(file), "format": fmt}
    if fmt in (formats.KERAS_H5, formats.KERAS_ARCHIVE):
        layout, layers = read_keras(file, archive=fmt == formats.KERAS_ARCHIVE)
        arrays = [a for layer in layers for _, a in layer.weights]
        info.update(layout=f"keras ({layout})", layers=len(layers), tensors=len(arrays),
                    values=int(sum(a.size for a in arrays)), model=guess_keras_model(layers))
        return info
    state = read_torch(file) if fmt == formats.TORCH else read_safetensors(file)[0]
    info.update(layout=detect_layout(list(state)), tensors=len(state),
                values=int(sum(t.numel() for t in state.values())), model=guess_torch_model(state))
    if fmt == formats.CONVZOO:
        ck = read_checkpoint(file)
        info.update(layout="convzoo checkpoint", model=ck.model, model_args=ck.model_args,
                    class_names=len(ck.class_names) if ck.class_names else None, extra=ck.extra,
                    convzoo_version=ck.convzoo_version)
    return info
