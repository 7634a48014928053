"""The Keras model around the application convzoo reproduces, as users save it (the Keras transfer-learning
guide's ``Sequential([base, GlobalAveragePooling2D(), Dense(n)])`` or ``Input -> Rescaling -> base -> pooling
-> Dropout -> Dense``, nested once or more).

The application is the nested model whose layers the family's Keras placement places (the deepest of
those that place completely). Around it:

- before it, ``Rescaling`` and ``Normalization`` are per-channel affine maps, folded into one
  preprocessing, (x - mean) / std on RGB pixels in 0..255; data augmentation and dropout layers do nothing
  at inference and are reported; anything else that changes the input is a :class:`WeightsError`;
- after it, global average or max pooling (or the application's own ``pooling=``), dropout (its rate is
  the model's ``drop_rate``) and one ``Dense``: convzoo's classifier, whatever its name. Hidden Dense
  layers, ``Flatten`` and anything else are a :class:`WeightsError` naming what the file has.

A model configuration (``.keras``, whole-model ``.h5``) gives every layer's class and settings. A Keras 3
weights-only file names each layer's class but keeps neither settings nor order, and a legacy weights-only
file only the names of layers without weights: what they cannot show is said in the notes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import WeightsError
from ..models.spec import Placement
from .keras_h5 import KerasFile, KerasLayer
from .mapping import FileHead

Place = Callable[[Sequence[str]], tuple[list[Placement], list[str]]]

POOLING = {"GlobalAveragePooling2D": "avg", "GlobalMaxPooling2D": "max"}
# Layers that pass their input through unchanged at inference.
INFERENCE_IDENTITY = ("Dropout", "SpatialDropout2D", "AlphaDropout", "GaussianDropout", "GaussianNoise",
                      "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
                      "RandomBrightness")
AFFINE = ("Rescaling", "Normalization")
ACTIVATIONS = ("Activation", "Softmax")
_OTHER = ("Dense", "Flatten", "InputLayer", "Functional", "Sequential")
_CANONICAL_NAMES = (*POOLING, *INFERENCE_IDENTITY, *AFFINE, *ACTIVATIONS, *_OTHER)
_NUMBERED = re.compile(r"(.+?)(?:_\d+)?")
# Keras' Normalization divides by max(sqrt(variance), epsilon), with the backend's epsilon.
_KERAS_EPSILON = 1e-7
_ORDER = {"InputLayer": 0, **{c: 0 for c in (*AFFINE, *INFERENCE_IDENTITY)}, "Dropout": 3, **{c: 2 for c in POOLING},
          "Dense": 4, **{c: 5 for c in ACTIVATIONS}}


def snake_case(name: str) -> str:
    """Keras' snake-case form of a class name (``GlobalAveragePooling2D`` -> ``global_average_pooling2d``), as
    Keras names layers and Keras 3 files name their groups."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


_CANONICAL = {snake_case(c): c for c in _CANONICAL_NAMES} | {"input": "InputLayer"}  # Keras 2 named it input_1


def layer_class(layer: KerasLayer) -> str | None:
    """The Keras class of ``layer``: as the file records it (configuration or Keras 3 group), else as its
    default name says (``global_average_pooling2d_1``) when that is a class convzoo knows; None otherwise."""
    if layer.class_name is not None:
        return _CANONICAL.get(snake_case(layer.class_name), layer.class_name)
    return _CANONICAL.get(_NUMBERED.fullmatch(layer.name).group(1))


def _unknown(layer: KerasLayer, where: str) -> str:
    return (f"layer '{layer.name}' {where} the application: a weights-only file does not say what it is; taken "
            "to do nothing")


def _shown(layer: KerasLayer) -> str:
    kind = layer_class(layer)
    return f"{kind} '{layer.name}'" if kind else f"'{layer.name}'"


@dataclass
class KerasModel:
    """A Keras file's model seen from convzoo: the application (``app``), the ``nesting`` from the file's
    outer model down to it (empty when the file is the application), the outer ``classifier`` Dense (None
    when the application has its own classifier or there is none), the file's ``head``, the folded
    ``preprocessing`` ((mean, std) per RGB channel in 0..255 pixel units; None when there is none or it
    cannot be read), the ``preprocessing_layers`` before the application, and ``notes``."""

    app: KerasLayer
    nesting: list[str]
    classifier: KerasLayer | None
    head: FileHead
    preprocessing: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    preprocessing_layers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_application(file: KerasFile, place: Place) -> tuple[tuple[str, ...], KerasLayer, list[Placement]]:
    """The nested model (or the file's model itself) that is the application: the one whose layers with
    weights the family's placement ``place`` places completely, the deepest of those; when none does, the
    one with the most layers placed (its leftovers then fail the load by name)."""
    best: tuple[tuple[bool, int, int], tuple[str, ...], KerasLayer, list[Placement]] | None = None
    for path, model in file.root.models():
        placed, unplaced = place([layer.name for layer in model.weighted()])
        score = (not unplaced and bool(placed), len(placed), len(path))
        if best is None or score > best[0]:
            best = (score, path, model, placed)
    assert best is not None  # the root is a model
    return best[1], best[2], best[3]


def _chain(model: KerasLayer, app: KerasLayer) -> list[KerasLayer]:
    """The layers of ``model`` in order, nested models other than ``app`` opened up."""
    out: list[KerasLayer] = []
    for layer in model.layers or []:
        if layer is not app and layer.layers is not None:
            out.extend(_chain(layer, app))
        else:
            out.append(layer)
    return out


_HEAD_KINDS = (*POOLING, "Dropout", "Flatten", "Dense")


def _flat(file: KerasFile, placed: set[str], notes: list[str]) -> tuple[list[KerasLayer], list[KerasLayer]]:
    """Before and after the application when the file's model is the application with layers added to it
    (``Model(base.input, Dense(n)(GlobalAveragePooling2D()(base.output)))``): up to the last input or
    preprocessing layer before the first layer the family places, and from the first head layer (pooling,
    dropout, Flatten, Dense) after the last one. The layers between are the application's (those the
    configuration names are noted; those with weights the family does not place fail the load by name)."""
    chain = _chain(file.root, file.root)
    if not file.ordered:
        before = [x for x in chain if layer_class(x) in (*AFFINE, *INFERENCE_IDENTITY) and layer_class(x) != "Dropout"]
        after = [x for x in chain if x.name not in placed and (_is_dense(x) or layer_class(x) in _HEAD_KINDS)]
        return before, sorted(after, key=lambda x: _ORDER.get(layer_class(x) or "", 2))
    where = [i for i, x in enumerate(chain) if x.name in placed]
    if not where:
        return [], []
    lead = chain[:where[0]]
    end = max((i + 1 for i, x in enumerate(lead) if layer_class(x) in ("InputLayer", *AFFINE, *INFERENCE_IDENTITY)),
              default=0)
    # A padding layer belongs to the convolution after it; anything else there is worth a word.
    own = [_shown(x) for x in lead[end:] if x.class_name not in (None, "ZeroPadding2D")]
    if own:
        notes.append(f"{', '.join(own)} before the first layer with weights: taken as the application's own")
    after = chain[where[-1] + 1:]
    start = next((i for i, x in enumerate(after) if _is_dense(x) or layer_class(x) in _HEAD_KINDS), len(after))
    return lead[:end], after[start:]


def _around(file: KerasFile, app: KerasLayer, placed: set[str], notes: list[str]
            ) -> tuple[list[KerasLayer], list[KerasLayer]]:
    """The layers before and after the application (by kind where the file keeps no order)."""
    if app is file.root:
        return _flat(file, placed, notes)
    chain = _chain(file.root, app)
    if not file.ordered:
        chain.sort(key=lambda layer: 1 if layer is app else _ORDER.get(layer_class(layer) or "", 2))
    i = next(i for i, layer in enumerate(chain) if layer is app)
    return chain[:i], chain[i + 1:]


def _check_single_io(file: KerasFile) -> None:
    config = file.config or {}
    for key, what in (("input_layers", "inputs"), ("output_layers", "outputs")):
        found = config.get("config", {}).get(key) if isinstance(config.get("config"), dict) else None
        if isinstance(found, list) and found and isinstance(found[0], list) and len(found) > 1:
            names = ", ".join(f"'{x[0]}'" for x in found if x)
            raise WeightsError(f"the file's Keras model has {len(found)} {what} ({names}); convzoo's models have one")


def _units(layer: KerasLayer) -> int:
    kernel = next((a for role, a in layer.weights if role in (None, "kernel") and a.ndim == 2), None)
    return int(kernel.shape[1]) if kernel is not None else int(layer.config.get("units", 0))


def _is_dense(layer: KerasLayer) -> bool:
    kind = layer_class(layer)
    return kind == "Dense" or (kind is None and any(a.ndim == 2 for _, a in layer.weights))


def _activation(layer: KerasLayer) -> str | None:
    if layer_class(layer) == "Softmax":
        return "softmax"
    value = layer.config.get("activation")
    if isinstance(value, dict):
        value = value.get("config", {}).get("name") or value.get("class_name")
    return None if value is None else str(value)


def _inner_pooling(app: KerasLayer) -> str | None:
    kinds = [POOLING[k] for k in map(layer_class, app.layers or []) if k in POOLING]
    return kinds[-1] if kinds else None


def _refuse_head(dense: list[KerasLayer], flatten: KerasLayer | None) -> None:
    if flatten is not None:
        after = f" before {_shown(dense[0])}" if dense else ""
        raise WeightsError(f"the file's head flattens the feature map ({_shown(flatten)}){after}; convzoo's "
                           "models pool it (global average or max) before one Dense")
    if len(dense) > 1:
        listed = ", ".join(f"'{d.name}' ({_units(d)} units)" for d in dense)
        raise WeightsError(f"the file's head has {len(dense)} Dense layers ({listed}), a hidden layer before the "
                           "classifier; convzoo's models have one Dense on the pooled features")


def _head(file: KerasFile, app: KerasLayer, after: list[KerasLayer], own: KerasLayer | None
          ) -> tuple[FileHead, KerasLayer | None, list[str]]:
    """The head after the application: (head, outer classifier Dense, notes)."""
    pool, dropout, activation, flatten = None, None, None, None
    dense: list[KerasLayer] = []
    notes: list[str] = []
    for layer in after:
        kind = layer_class(layer)
        if kind == "InputLayer":
            continue
        if kind in POOLING and not dense:
            pool = POOLING[kind]
        elif kind == "Flatten":
            flatten = layer
        elif kind in INFERENCE_IDENTITY:
            if kind == "Dropout" and not dense and "rate" in layer.config:
                dropout = float(layer.config["rate"])
        elif _is_dense(layer):
            dense.append(layer)
        elif kind in ACTIVATIONS and (dense or own):
            activation = _activation(layer)
        elif kind is None and not layer.weights:
            notes.append(_unknown(layer, "after"))
        else:
            raise WeightsError(f"the file's head has {_shown(layer)} after the application; convzoo's head is "
                               "global pooling, dropout and one Dense")
    dense = [own, *dense] if own is not None else dense
    _refuse_head(dense, flatten)
    classifier = dense[0] if dense else None
    pool = pool or _inner_pooling(app)
    if classifier is not None and classifier is not own and pool is None:
        if file.config is not None:
            raise WeightsError(f"the file's {_shown(classifier)} classifies the unpooled feature map; convzoo's "
                               "models pool it (global average or max) first")
        notes.append("the file does not record the pooling before its classifier (weights-only); the model's is "
                     "used")
    activation = activation or (_activation(classifier) if classifier is not None else None)
    head = FileHead(_units(classifier) if classifier else 0, pool, dropout, activation,
                    classifier.name if classifier else None)
    return head, (classifier if classifier is not own else None), notes


def _numbers(value: Any, what: str) -> np.ndarray:
    """A scalar or per-channel setting as 3 float64 values (a serialised numpy array unpacked)."""
    if isinstance(value, dict):
        value = value.get("config", {}).get("value")
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 1:
        return np.repeat(array, 3)
    if array.size != 3:
        raise WeightsError(f"{what} holds {array.size} values; convzoo folds a scalar or one value per channel (3)")
    return array


def _normalization(layer: KerasLayer) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, offset) of a Normalization, from its configuration or its adapted weights."""
    config, what = layer.config, _shown(layer)
    axis = config.get("axis", [-1])
    if axis not in ([-1], [3], -1, 3, [], None):
        raise WeightsError(f"{what} normalises over axis {axis}; convzoo folds per-channel (axis -1) ones only")
    if config.get("mean") is not None:
        mean, variance = config["mean"], config.get("variance")
    else:
        arrays = {role: a for role, a in layer.weights if role is not None} or \
            {r: a for r, (_, a) in zip(("mean", "variance"), layer.weights)}
        if "mean" not in arrays or "variance" not in arrays:
            return None
        mean, variance = arrays["mean"], arrays["variance"]
    mean, std = _numbers(mean, what), np.maximum(np.sqrt(_numbers(variance, what)), _KERAS_EPSILON)
    if config.get("invert"):
        return std, mean
    return 1.0 / std, -mean / std


def _affine(layer: KerasLayer) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, offset) per channel of a Rescaling or Normalization; None when the file lacks its settings."""
    if layer_class(layer) == "Normalization":
        return _normalization(layer)
    if "scale" not in layer.config:
        return None
    return _numbers(layer.config["scale"], _shown(layer)), _numbers(layer.config.get("offset", 0.0), _shown(layer))


def _preprocessing(before: list[KerasLayer], ordered: bool
                   ) -> tuple[tuple[tuple[float, ...], tuple[float, ...]] | None, list[str], list[str]]:
    """(folded (mean, std) or None, the layers' classes, notes) for the layers before the application."""
    scale, offset = np.ones(3), np.zeros(3)
    affine, unread, identity, notes = [], [], [], []
    for layer in before:
        kind = layer_class(layer)
        if kind == "InputLayer":
            continue
        if kind in AFFINE:
            affine.append(layer)
            found = _affine(layer)
            if found is None:
                unread.append(_shown(layer))
            else:
                scale, offset = found[0] * scale, found[0] * offset + found[1]
        elif kind in INFERENCE_IDENTITY:
            identity.append(_shown(layer))
        elif kind is None and not layer.weights:
            notes.append(_unknown(layer, "before"))
        else:
            raise WeightsError(f"{_shown(layer)} before the application changes its input; convzoo folds only "
                               "Rescaling and Normalization into the preprocessing")
    if identity:
        notes.append(f"{', '.join(identity)}: data augmentation or noise, which does nothing at inference; left out")
    names = [layer_class(layer) or layer.name for layer in before if layer_class(layer) != "InputLayer"]
    if unread or (len(affine) > 1 and not ordered):
        why = (f"{', '.join(unread)} keep their settings only in the model configuration" if unread
               else "the file keeps no layer order")
        notes.append(f"preprocessing layers not folded: {why}, which a weights-only file lacks; the model takes "
                     "the input they give the application")
        return None, names, notes
    if not affine:
        return None, names, notes
    if np.any(scale == 0):
        raise WeightsError(f"the preprocessing layers ({', '.join(map(_shown, affine))}) zero a channel")
    mean, std = -offset / scale, 1.0 / scale
    notes.append(f"{', '.join(map(_shown, affine))} folded into the preprocessing: (x - mean) / std with mean "
                 f"{_fmt(mean)}, std {_fmt(std)} (RGB pixels 0..255)")
    return (tuple(map(float, mean)), tuple(map(float, std))), names, notes


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def keras_model(file: KerasFile, place: Place, classifier: str) -> KerasModel:
    """The model around the application in ``file`` (see the module docstring). ``place`` is the family's
    Keras placement for the model being loaded; ``classifier`` that model's classifier path (the application's
    own Dense, placed there, is the file's classifier). Raises :class:`WeightsError` for a head or a layer
    convzoo does not have, one line naming it."""
    _check_single_io(file)
    path, app, placed = find_application(file, place)
    own_names = {p.layer for p in placed if p.path == classifier}
    own = next((layer for layer in app.weighted() if layer.name in own_names), None)
    notes: list[str] = []
    before, after = _around(file, app, {n for p in placed for n in (p.layer, p.partner) if n}, notes)
    head, outer, head_notes = _head(file, app, after, own)
    preprocessing, names, more = _preprocessing(before, file.ordered)
    nesting = list(path) if app is not file.root else []
    return KerasModel(app, nesting, outer, head, preprocessing, names, notes + more + head_notes)
