"""Reading Keras weight files: the legacy HDF5 layout (Keras 2 and Keras 3's ``.h5`` writer) and Keras 3's
``.weights.h5`` (also inside a ``.keras`` archive).

Legacy: a ``layer_names`` attribute (on the root, or on ``model_weights`` in a whole-model file) lists the
layers; each layer's group has a ``weight_names`` attribute (``conv2d_1/kernel:0`` in Keras 2,
``conv2d/kernel`` in Keras 3) naming its datasets. Keras 3: ``layers/<class>_<i>/vars/<j>``, where the group
name counts layers per class and the ``name`` attribute of ``vars`` holds the layer's name; nested models
repeat the pattern one level down.

Whole-model files also carry the model's configuration (a legacy ``.h5``'s ``model_config`` attribute, a
``.keras`` archive's ``config.json``); :func:`read_keras_config` and :func:`batchnorm_settings` read the
BatchNormalization conventions from it.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import WeightsError
from .mapping import one_line

_TREE_KEYS = ("layers", "_layer_checkpoint_dependencies")


@dataclass
class KerasLayer:
    """One Keras layer with weights: its name and its arrays in Keras order, each with its role
    (``kernel``, ``gamma``, ...) when the file records it, else None."""

    name: str
    weights: list[tuple[str | None, np.ndarray]] = field(default_factory=list)

    @property
    def roles(self) -> list[str | None]:
        """The role of each array (None where the file records none)."""
        return [r for r, _ in self.weights]


def _decode(v: Any) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def _attr_list(group: Any, name: str) -> list[str] | None:
    """A list attribute, joined from the ``name0``, ``name1``, ... chunks Keras writes when it is large."""
    if name in group.attrs:
        return [_decode(v) for v in group.attrs[name]]
    chunks, i = [], 0
    while f"{name}{i}" in group.attrs:
        chunks.extend(_decode(v) for v in group.attrs[f"{name}{i}"])
        i += 1
    return chunks if i else None


def _role(weight_name: str) -> str:
    """``block1_conv1/kernel:0`` -> ``kernel``."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def _read_legacy(root: Any) -> list[KerasLayer]:
    layers = []
    for name in _attr_list(root, "layer_names") or []:
        group = root[name]
        names = _attr_list(group, "weight_names") or []
        if names:
            layers.append(KerasLayer(name, [(_role(w), np.asarray(group[w])) for w in names]))
    return layers


def _walk_v3(group: Any, where: str, out: list[KerasLayer]) -> None:
    for key in group:
        child = group[key]
        if not hasattr(child, "keys"):
            continue
        path = f"{where}/{key}"
        variables = child.get("vars")
        if variables is not None and len(variables):
            if "name" not in variables.attrs:
                raise WeightsError(f"{path}/vars has no 'name' attribute: written by a Keras 3 release that does "
                                   "not record layer names; re-save with a newer Keras or in the legacy .h5 format")
            values = [np.asarray(variables[k]) for k in sorted(variables, key=int)]
            out.append(KerasLayer(_decode(variables.attrs["name"]), [(None, v) for v in values]))
        for sub in _TREE_KEYS:
            if sub in child:
                _walk_v3(child[sub], f"{path}/{sub}", out)


def _read_open(f: Any) -> tuple[str, list[KerasLayer]]:
    for key in _TREE_KEYS:
        if key in f:
            layers: list[KerasLayer] = []
            _walk_v3(f[key], key, layers)
            return "keras3", layers
    root = f["model_weights"] if "model_weights" in f else f
    if _attr_list(root, "layer_names") is None:
        raise WeightsError("an HDF5 file without Keras weights (no 'layer_names' attribute, no 'layers' group)")
    return "legacy", _read_legacy(root)


def read_keras(path: str | Path, archive: bool = False) -> tuple[str, list[KerasLayer]]:
    """Read every Keras layer that has weights from ``path``; returns the layout (``'legacy'`` or ``'keras3'``)
    and the layers in file order. ``archive=True`` reads ``model.weights.h5`` inside a ``.keras`` zip.
    Anything unreadable (truncated file, missing dataset) is a one-line :class:`WeightsError`."""
    path = Path(path)
    try:
        if archive:
            with zipfile.ZipFile(path) as z:
                source: Any = io.BytesIO(z.read("model.weights.h5"))
        else:
            source = path
        with h5py.File(source, "r") as f:
            layout, layers = _read_open(f)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"{path}: cannot read Keras weights ({one_line(exc)})") from None
    if not layers:
        raise WeightsError(f"{path}: Keras file without any weights")
    return layout, layers


# Keras' BatchNormalization defaults, for configurations that leave them out.
_KERAS_BN_EPSILON = 1e-3
_KERAS_BN_MOMENTUM = 0.99


def read_keras_config(path: str | Path, archive: bool = False) -> dict[str, Any] | None:
    """The model configuration a Keras file carries (a whole-model legacy ``.h5``'s ``model_config``
    attribute, a ``.keras`` archive's ``config.json``), or None for a weights-only file."""
    try:
        if archive:
            with zipfile.ZipFile(path) as z:
                raw: Any = z.read("config.json") if "config.json" in z.namelist() else None
        else:
            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
        if raw is None:
            return None
        config = json.loads(_decode(raw))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"{path}: cannot read its Keras model configuration ({one_line(exc)})") from None
    return config if isinstance(config, dict) else None


def batchnorm_settings(config: Any) -> dict[str, tuple[float, float]]:
    """(epsilon, Keras momentum) of every BatchNormalization layer in a Keras model configuration, by name."""
    found: dict[str, tuple[float, float]] = {}
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            layer = node.get("config")
            if node.get("class_name") == "BatchNormalization" and isinstance(layer, dict) and "name" in layer:
                found[str(layer["name"])] = (float(layer.get("epsilon", _KERAS_BN_EPSILON)),
                                             float(layer.get("momentum", _KERAS_BN_MOMENTUM)))
            stack.extend(node.values())
    return found
