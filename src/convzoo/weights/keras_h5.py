"""Reading Keras weight files: the legacy HDF5 layout (Keras 2 and Keras 3's ``.h5`` writer) and Keras 3's
``.weights.h5`` (also inside a ``.keras`` archive).

Legacy: a ``layer_names`` attribute (on the root, or on ``model_weights`` in a whole-model file) lists the
layers in the model's order; each layer's group has a ``weight_names`` attribute (``conv2d_1/kernel:0`` in
Keras 2, ``conv2d/kernel`` in Keras 3) naming its datasets. A nested model (an application inside a
``Sequential``) is one group whose weight names are ``<inner layer>/<variable>``, whatever its depth.
Keras 3: ``layers/<class>_<i>/vars/<j>``, where the group name is the snake-case class counted per class
and the ``name`` attribute of ``vars`` holds the layer's name (layers without weights included); a nested
model repeats the pattern under its own ``layers`` group. The group order is alphabetical, not the model's.

Whole-model files also carry the model's configuration (a legacy ``.h5``'s ``model_config`` attribute, a
``.keras`` archive's ``config.json``): the source of truth for layer classes, their settings and the
nesting. :func:`batchnorm_settings` reads the BatchNormalization conventions from it.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import WeightsError
from .mapping import one_line

_TREE_KEYS = ("layers", "_layer_checkpoint_dependencies")
_NUMBERED = re.compile(r"(.+?)(?:_\d+)?")


@dataclass
class KerasLayer:
    """One Keras layer: its ``name``, its arrays in Keras order each with its role (``kernel``, ``gamma``, ...)
    when the file records it (else None), its Keras class (``class_name``: from the model configuration, or
    the snake-case class a Keras 3 file names its group after; None when the file does not say), its
    ``config`` ({} when the file has no model configuration) and, for a nested model, its ``layers``."""

    name: str
    weights: list[tuple[str | None, np.ndarray]] = field(default_factory=list)
    class_name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    layers: list["KerasLayer"] | None = None

    @property
    def roles(self) -> list[str | None]:
        """The role of each array (None where the file records none)."""
        return [r for r, _ in self.weights]

    def weighted(self) -> list["KerasLayer"]:
        """The layers with weights in this model (nested models included), in order; ``[self]`` for a layer."""
        if self.layers is None:
            return [self] if self.weights else []
        return [leaf for layer in self.layers for leaf in layer.weighted()]

    def models(self, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], "KerasLayer"]]:
        """This model and every model nested in it, each with the names from this one down to it."""
        if self.layers is None:
            return []
        here = (*path, self.name)
        return [(here, self)] + [m for layer in self.layers for m in layer.models(here)]


@dataclass
class KerasFile:
    """A Keras file read: its ``layout`` (``'legacy'`` or ``'keras3'``), the outer model (``root``, whose
    ``layers`` are in the model's order when ``ordered``; a Keras 3 weights-only file keeps no order) and the
    model configuration (``config``, None for a weights-only file)."""

    path: Path
    layout: str
    root: KerasLayer
    config: dict[str, Any] | None
    ordered: bool


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


def _split_weight_name(weight_name: str, layer: str) -> tuple[str, str]:
    """``block1_conv1/kernel:0`` -> (``block1_conv1``, ``kernel``); a bare ``kernel:0`` belongs to ``layer``."""
    parts = weight_name.split("/")
    return (parts[-2] if len(parts) > 1 else layer), parts[-1].split(":", 1)[0]


def _legacy_layer(name: str, group: Any) -> KerasLayer:
    """A layer group of the legacy layout. A nested model's group holds every weight of its layers, named
    ``<inner layer>/<variable>``: it becomes a model whose layers are those inner layers."""
    inner: dict[str, list[tuple[str | None, np.ndarray]]] = {}
    for weight_name in _attr_list(group, "weight_names") or []:
        layer, role = _split_weight_name(weight_name, name)
        inner.setdefault(layer, []).append((role, np.asarray(group[weight_name])))
    if len(inner) <= 1:
        return KerasLayer(name, next(iter(inner.values()), []))
    return KerasLayer(name, layers=[KerasLayer(n, w) for n, w in inner.items()])


def _read_legacy(root: Any) -> KerasLayer:
    names = _attr_list(root, "layer_names") or []
    return KerasLayer(_decode(root.attrs.get("model_name", "")) or "model",
                      layers=[_legacy_layer(n, root[n]) for n in names])


def _v3_layer(group: Any, key: str, where: str) -> KerasLayer:
    variables = group.get("vars")
    if variables is not None and len(variables) and "name" not in variables.attrs:
        raise WeightsError(f"{where}/vars has no 'name' attribute: written by a Keras 3 release that does "
                           "not record layer names; re-save with a newer Keras or in the legacy .h5 format")
    name = _decode(variables.attrs["name"]) if variables is not None and "name" in variables.attrs else key
    weights = [(None, np.asarray(variables[k])) for k in sorted(variables, key=int)] if variables is not None else []
    sub = next((group[k] for k in _TREE_KEYS if k in group), None)
    layers = None
    if sub is not None:
        layers = [_v3_layer(sub[k], k, f"{where}/{k}") for k in sub if hasattr(sub[k], "keys")]
    return KerasLayer(name, weights, _NUMBERED.fullmatch(key).group(1), layers=layers)


def _read_weights(f: Any) -> tuple[str, KerasLayer]:
    for key in _TREE_KEYS:
        if key in f:
            root = _v3_layer(f, "model", key)
            return "keras3", root
    root = f["model_weights"] if "model_weights" in f else f
    if _attr_list(root, "layer_names") is None:
        raise WeightsError("an HDF5 file without Keras weights (no 'layer_names' attribute, no 'layers' group)")
    return "legacy", _read_legacy(root)


def _from_config(node: Any) -> KerasLayer:
    """The layers a model configuration describes (no weights), nested models included."""
    config = node.get("config") if isinstance(node, dict) else None
    if isinstance(config, list):  # Keras 2.2's Sequential: the config is the list of layers
        config = {"layers": config}
    config = config if isinstance(config, dict) else {}
    name = config.get("name") or (node.get("name") if isinstance(node, dict) else None)
    sub = config.get("layers")
    layers = [_from_config(layer) for layer in sub] if isinstance(sub, list) else None
    class_name = node.get("class_name") if isinstance(node, dict) else None
    return KerasLayer(str(name or class_name or "?"), class_name=class_name, config=config, layers=layers)


def _descendants(model: KerasLayer) -> list[KerasLayer]:
    return [d for layer in model.layers or [] for d in (layer, *_descendants(layer))]


def _attach(target: KerasLayer, found: KerasLayer) -> None:
    """Give the layers of a configuration (``target``) the weights the file holds for them (``found``): by
    name, one level at a time (Keras 3), or anywhere below a nested model, whose legacy group holds the
    weights of all its layers."""
    if found.layers is None or target.layers is None:
        target.weights = found.weights if found.layers is None else [w for x in found.weighted() for w in x.weights]
        return
    direct = {layer.name: layer for layer in target.layers}
    below = {layer.name: layer for layer in reversed(_descendants(target))}
    for child in found.layers:
        layer = direct.get(child.name) or below.get(child.name)
        if layer is None:
            if child.weighted():
                raise WeightsError(f"weights for Keras layer '{child.name}', which the file's model configuration "
                                   f"does not have in '{target.name}'")
            continue
        _attach(layer, child)


def _read_config(f: Any, archive: zipfile.ZipFile | None) -> dict[str, Any] | None:
    if archive is not None:
        raw: Any = archive.read("config.json") if "config.json" in archive.namelist() else None
    else:
        raw = f.attrs.get("model_config")
    if raw is None:
        return None
    config = json.loads(_decode(raw))
    return config if isinstance(config, dict) else None


def read_keras(path: str | Path, archive: bool = False) -> KerasFile:
    """Read the Keras file at ``path``: every layer, with its weights, its class and configuration where
    the file has a model configuration (the source of truth for classes and nesting), nested models as
    models. ``archive=True`` reads a ``.keras`` zip (``model.weights.h5`` and ``config.json``). Anything
    unreadable (truncated file, missing dataset) is a one-line :class:`WeightsError`."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path) if archive else None
        try:
            source: Any = io.BytesIO(zf.read("model.weights.h5")) if zf is not None else path
            with h5py.File(source, "r") as f:
                layout, found = _read_weights(f)
                config = _read_config(f, zf)
        finally:
            if zf is not None:
                zf.close()
        root = found
        if config is not None:
            root = _from_config(config)
            if root.layers is None:
                raise WeightsError("its model configuration lists no layers")
            _attach(root, found)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"{path}: cannot read Keras weights ({one_line(exc)})") from None
    if not root.weighted():
        raise WeightsError(f"{path}: Keras file without any weights")
    return KerasFile(path, layout, root, config, ordered=config is not None or layout == "legacy")


def read_keras_config(path: str | Path, archive: bool = False) -> dict[str, Any] | None:
    """The model configuration a Keras file carries (a whole-model legacy ``.h5``'s ``model_config``
    attribute, a ``.keras`` archive's ``config.json``), or None for a weights-only file."""
    return read_keras(path, archive).config


# Keras' BatchNormalization defaults, for configurations that leave them out.
_KERAS_BN_EPSILON = 1e-3
_KERAS_BN_MOMENTUM = 0.99


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
