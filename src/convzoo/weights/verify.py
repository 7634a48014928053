"""Layer-by-layer comparison of a convzoo model with the reference its weights came from.

The same input runs through both. convzoo's module outputs are captured with forward hooks; the reference's
with a ``keras.Model`` over the mapped layers' outputs (Keras) or with forward hooks (torchvision, timm).
Keras layers are paired with convzoo modules by the importer's own placement (the family's
:class:`~convzoo.models.spec.KerasMapping`): every Conv2D, SeparableConv2D, DepthwiseConv2D,
BatchNormalization and Dense layer, plus the block outputs the family names (Xception's ``add`` layers,
Inception's ``mixedN``, ResNet's ``convS_blockB_out``). torch modules are paired through the importer's
key renaming (:mod:`.torch_state`). :func:`prepare_keras_check` sets up ``convzoo verify-import``: the
file loaded into convzoo and, with Keras' own loader, into the Keras application the model reproduces.

A row diverges when its largest absolute difference exceeds ``atol + rtol * max|reference|``: ``rtol``
absorbs float32 rounding in deep layers whose activations reach the hundreds (as with 'caffe' inputs). The
logits, compared before any softmax (a Keras Dense layer's pre-activation), agree under the same rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import ConvzooError, WeightsError
from ..registry import build_model, family_of, get_model_cfg, list_models
from ..utils.tables import format_table
from .keras_map import guess_keras_model, keras_placements
from .loading import load_weights
from .reference import build_keras_reference, load_into_keras, require_keras
from .source import keras_structure, read_weights
from .torch_state import rename_keys

WEIGHTED_LAYERS = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D", "BatchNormalization", "Dense")


@dataclass(frozen=True)
class LayerDiff:
    """One compared layer: the reference's ``name`` (Keras layer or torch module), the convzoo module
    ``path``, the output ``shape`` (NCHW), the largest absolute difference, that difference relative to the
    largest reference value, and whether it exceeds the tolerance."""

    name: str
    path: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    diverges: bool


@dataclass
class ImportReport:
    """The comparison: one :class:`LayerDiff` per mapped layer in graph order, the largest logit difference,
    the largest reference logit (``logit_scale``), and the tolerances used."""

    reference: str
    rows: list[LayerDiff]
    max_abs_logit_diff: float
    logit_scale: float
    atol: float
    rtol: float

    @property
    def first_divergent(self) -> str | None:
        """The reference name of the first layer, in graph order, whose difference exceeds the tolerance."""
        return next((r.name for r in self.rows if r.diverges), None)

    @property
    def tolerance(self) -> float:
        """The largest logit difference that still agrees: ``atol + rtol * logit_scale``."""
        return self.atol + self.rtol * self.logit_scale

    @property
    def agree(self) -> bool:
        """True when the logits agree within :attr:`tolerance`."""
        return self.max_abs_logit_diff <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON values (a non-finite difference becomes None)."""
        return dict(reference=self.reference, agree=self.agree, first_divergent=self.first_divergent,
                    max_abs_logit_diff=_finite(self.max_abs_logit_diff), tolerance=_finite(self.tolerance),
                    atol=self.atol, rtol=self.rtol,
                    layers=[dict(name=r.name, path=r.path, shape=list(r.shape), max_abs=_finite(r.max_abs),
                                 max_rel=_finite(r.max_rel), diverges=r.diverges) for r in self.rows])

    def table(self) -> list[str]:
        """The rows as text lines; the first divergent layer is marked ``>>``, later divergent ones ``!``."""
        header = ("", self.reference, "convzoo module", "output shape", "max abs", "max rel")
        first = self.first_divergent
        cells = [(">>" if r.name == first else "!" if r.diverges else "", r.name, r.path, str(r.shape),
                  f"{r.max_abs:.3g}", f"{r.max_rel:.3g}") for r in self.rows]
        lines = format_table(header, cells).splitlines()
        verdict = "agree" if self.agree else "DIFFER"
        lines.append(f"logits: max abs diff {self.max_abs_logit_diff:.3g} (tolerance {self.atol:g} + "
                     f"{self.rtol:g} x max|logit| = {self.tolerance:.3g}): {verdict}; "
                     f"first divergent layer: {first or 'none'}")
        return lines


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _nchw(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def _row(name: str, path: str, ref: np.ndarray, ours: torch.Tensor, atol: float, rtol: float) -> LayerDiff:
    mine = ours.detach().cpu().numpy()
    if ref.shape != mine.shape:
        return LayerDiff(name, path, tuple(mine.shape), math.inf, math.inf, True)
    diff = np.abs(ref.astype(np.float64) - mine.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return LayerDiff(name, path, tuple(mine.shape), max_abs, max_rel, not max_abs <= atol + rtol * scale)


def _capture(store: dict[str, torch.Tensor], name: str, module: nn.Module, args: Any, output: Any) -> None:
    # Cloned: an in-place ReLU after a BatchNorm would otherwise change the captured output.
    if name not in store and isinstance(output, torch.Tensor):
        store[name] = output.detach().clone()


def _logits(out: Any) -> torch.Tensor:
    """The main logits of a convzoo model's or a reference's output: a tensor, or a named pair's ``logits``
    (convzoo's :class:`~convzoo.models.base.LogitsWithAux`, torchvision's ``InceptionOutputs``)."""
    return out if isinstance(out, torch.Tensor) else out.logits


def run_hooked(model: nn.Module, inputs: torch.Tensor, paths: Iterable[str]
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run ``model`` in eval mode on ``inputs``; returns the first output of each module in ``paths``, in the
    order they ran, and the model's output. The model's training mode is restored afterwards."""
    captured: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(p).register_forward_hook(partial(_capture, captured, p)) for p in paths]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = _logits(model(inputs))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return captured, out.detach()


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _keras_block_outputs(names: list[str], model: nn.Module) -> dict[str, str]:
    family = family_of(model)
    return family.keras.block_outputs(names, model) if family is not None and family.keras is not None else {}


def _dense_logits(layer: Any, features: np.ndarray) -> np.ndarray:
    """A Keras Dense layer's output before its activation."""
    keras = require_keras()

    out = features @ np.asarray(keras.ops.convert_to_numpy(layer.kernel))
    if layer.bias is not None:
        out = out + np.asarray(keras.ops.convert_to_numpy(layer.bias))
    return out


def compare_with_keras(keras_model: Any, model: nn.Module, inputs: torch.Tensor, atol: float = 1e-4,
                       rtol: float = 1e-5) -> ImportReport:
    """Run ``inputs`` (NCHW; transposed to NHWC for Keras) through a Keras model and a convzoo model holding
    the same weights and compare them layer by layer (see the module docstring)."""
    keras = require_keras()

    layers = list(keras_model.layers)
    by_name = {layer.name: layer for layer in layers}
    weighted = [layer.name for layer in layers if type(layer).__name__ in WEIGHTED_LAYERS and layer.weights]
    pairs = {partner or name: path for name, path, partner in keras_placements(weighted, model)[0]}
    pairs.update(_keras_block_outputs(list(by_name), model))
    pairs = {n: p for n, p in pairs.items() if _has_module(model, p)}
    order = {layer.name: i for i, layer in enumerate(layers)}
    names = sorted(pairs, key=order.__getitem__)
    last = layers[-1]
    dense = [n for n in names if type(by_name[n]).__name__ == "Dense"]
    if type(last).__name__ == "Dense" and last.name not in dense:
        dense.append(last.name)
    probe = keras.Model(keras_model.input, [by_name[n].output for n in names]
                        + [by_name[n].input for n in dense] + [keras_model.output])
    x = inputs.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()
    with torch.no_grad():
        values = [np.asarray(keras.ops.convert_to_numpy(v)) for v in probe(x, training=False)]
    ref = {n: _nchw(v) for n, v in zip(names, values)}
    ref.update({n: _dense_logits(by_name[n], v) for n, v in zip(dense, values[len(names):])})
    ref_logits = ref[last.name] if last.name in dense else _nchw(values[-1])
    ours, logits = run_hooked(model, inputs, set(pairs.values()))
    rows = [_row(n, pairs[n], ref[n], ours[pairs[n]], atol, rtol) for n in names if pairs[n] in ours]
    return _report("keras layer", rows, ref_logits, logits, atol, rtol)


def _report(reference: str, rows: list[LayerDiff], ref_logits: np.ndarray, logits: torch.Tensor, atol: float,
            rtol: float) -> ImportReport:
    mine = logits.cpu().numpy()
    scale = float(np.abs(ref_logits).max()) if ref_logits.size else 0.0
    if ref_logits.shape != mine.shape:
        return ImportReport(reference, rows, math.inf, scale, atol, rtol)
    diff = float(np.abs(ref_logits.astype(np.float64) - mine.astype(np.float64)).max())
    return ImportReport(reference, rows, diff, scale, atol, rtol)


def compare_with_torch(reference: nn.Module, model: nn.Module, inputs: torch.Tensor, atol: float = 1e-4,
                       rtol: float = 1e-5) -> ImportReport:
    """Run ``inputs`` through a torchvision/timm model and a convzoo model holding the same weights and compare
    every module that owns weights, paired through the importer's key renaming, in the reference's
    execution order."""
    ref_modules = dict(reference.named_modules())
    pairs: dict[str, str] = {}
    for key, new in rename_keys(list(reference.state_dict())).items():
        source, target = key.rpartition(".")[0], new.rpartition(".")[0]
        if source in ref_modules and source not in pairs and _has_module(model, target):
            pairs[source] = target
    theirs, ref_out = run_hooked(reference, inputs, pairs)
    ours, out = run_hooked(model, inputs, set(pairs.values()))
    rows = [_row(n, pairs[n], value.cpu().numpy(), ours[pairs[n]], atol, rtol)
            for n, value in theirs.items() if pairs[n] in ours]
    return _report("torch module", rows, ref_out.cpu().numpy(), out, atol, rtol)


@dataclass
class KerasCheck:
    """What ``convzoo verify-import`` compares: the Keras ``file`` (format ``fmt``), the convzoo ``model``
    loaded from it by convzoo, and the ``keras.applications.<app>`` model loaded from it by Keras."""

    file: Path
    fmt: str
    app: str
    model: nn.Module
    keras_model: Any


def prepare_keras_check(path: str | Path, model_name: str) -> KerasCheck:
    """Load the Keras file at ``path`` into registered model ``model_name`` (with the file's classifier, or
    without one, as the file has it) and, with Keras' own loader, into the Keras application the model
    reproduces exactly. Raises :class:`ConvzooError` for a model without a Keras reference or without Keras
    installed, and :class:`WeightsError` for a file that is not a Keras application's file (another model's,
    or one that nests the application in a model of its own)."""
    cfg = get_model_cfg(model_name)
    app = cfg.exact_reference("keras")
    if app is None:
        known = [n for n in list_models() if get_model_cfg(n).exact_reference("keras")]
        raise ConvzooError(f"{model_name} has no Keras reference (it reproduces {cfg.reference}); verify-import "
                           f"compares these with keras.applications: {', '.join(known)}")
    file = read_weights(path)
    if file.keras is None:
        raise WeightsError(f"{file.path}: a {file.format} file; verify-import compares Keras files (.h5, "
                           ".weights.h5, .keras)")
    require_keras()
    with torch.device("meta"):
        structure = keras_structure(file.keras, build_model(cfg.name))
    guess = guess_keras_model(structure.app.weighted())
    if guess is not None and guess != cfg.name:
        raise WeightsError(f"{file.path} holds {guess} weights, not {cfg.name}")
    if structure.nesting:
        raise WeightsError(f"{file.path}: the application is nested in a model of its own "
                           f"({' > '.join(structure.nesting)}); verify-import compares a keras.applications "
                           "model's own file")
    classes = structure.head.classes
    model = build_model(cfg.name, **({"num_classes": classes} if classes else {"include_top": False, "pooling": "avg"}))
    load_weights(model, file)
    keras_model = build_keras_reference(app, classes)
    load_into_keras(keras_model, file.path, file.format, file.keras.layout)
    return KerasCheck(file.path, file.format, app, model, keras_model)
