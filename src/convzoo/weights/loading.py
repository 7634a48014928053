"""One way in: :func:`load_weights` reads any supported file into a convzoo model, strictly, and reports."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ChecksumError, WeightsError
from . import formats
from .layouts import TORCH_DEPTHWISE, TORCH_POINTWISE, fit_kernel
from .mapping import Mapped
from .records import WeightRecord, find_record

log = logging.getLogger(__name__)

_SHOWN = 4
_AUX = "AuxLogits."


@dataclass
class LoadReport:
    """What :func:`load_weights` did: the file, its ``format`` and key ``layout``, the convzoo keys
    ``loaded``, the classifier tensors ``skipped`` (with why), and ``missing``/``unexpected``/``mismatched``
    entries (empty after a strict load; with ``strict=False`` what was left out), ``notes`` (conversions,
    BatchNorm conventions, folds) and the :class:`~.records.WeightRecord` attached to the model."""

    path: str
    format: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    record: WeightRecord | None = None

    @property
    def complete(self) -> bool:
        """True when every tensor of the model came from the file and nothing in the file was left over."""
        return not (self.skipped or self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        """The missing, unexpected and mismatched entries as one line (long lists cut, with a count)."""
        parts = [_listing(n, what) for what, n in (("missing", self.missing), ("unexpected", self.unexpected),
                                                   ("shape mismatch", self.mismatched)) if n]
        return "; ".join(parts)

    def __str__(self) -> str:
        line = f"loaded {len(self.loaded)} tensors from {self.path} ({self.format}, {self.layout})"
        if self.skipped:
            line += f"; skipped {_listing(self.skipped, 'head tensors')}"
        if self.problems():
            line += f"; {self.problems()}"
        return line


def _listing(items: list[str], what: str) -> str:
    shown = ", ".join(items[:_SHOWN])
    more = f", ... {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"{len(items)} {what} [{shown}{more}]"


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = getattr(getattr(model, "default_cfg", None), "classifier", "fc") or "fc"
    return f"{classifier}.", f"{_AUX}fc."


def apply_mapped(model: nn.Module, mapped: Mapped, report: LoadReport, strict: bool = True,
                 lenient_head: bool = True) -> LoadReport:
    """Copy ``mapped`` into ``model``. Classifier (and auxiliary classifier) tensors that do not fit, because
    the model has no classifier or another number of classes, are skipped with a warning when
    ``lenient_head``; anything else missing, unexpected or of another shape raises one :class:`WeightsError`
    line when ``strict`` (else it is left out, reported and warned about)."""
    target = model.state_dict(keep_vars=True)
    heads = _head_prefixes(model) if lenient_head else ()
    has_aux = any(k.startswith(_AUX) for k in target)
    keras_source = mapped.layout.startswith("keras")
    loaded = {}
    for key, (value, origin) in mapped.tensors.items():
        is_head = key.startswith(heads) or (lenient_head and key.startswith(_AUX) and not has_aux)
        src = origin if origin == f"'{key}'" else f"{origin} -> {key}"
        if key not in target:
            if is_head:
                report.skipped.append(f"{src} (not in the model)")
            else:
                report.unexpected.append(src)
        elif tuple(value.shape) != tuple(target[key].shape):
            fitted = None if keras_source else _fit_layout(model, key, value, src)
            if fitted is None:
                msg = f"{src}: model {_shape(target[key])}, file {_shape(value)}"
                (report.skipped if is_head else report.mismatched).append(msg)
            else:
                loaded[key], layout = fitted
                if layout not in (TORCH_POINTWISE, TORCH_DEPTHWISE):
                    report.notes.append(f"{src}: kernel stored as {layout}, converted")
        else:
            loaded[key] = value
    report.unexpected.extend(mapped.unplaced)
    report.mismatched.extend(mapped.mismatched)
    for key in target:
        if key in mapped.tensors or key.endswith("num_batches_tracked"):
            continue
        if key.startswith(heads) or (lenient_head and key.startswith(_AUX)):
            report.skipped.append(f"{key} (not in the file; left as initialised)")
        else:
            report.missing.append(key)
    report.notes.extend(mapped.notes)
    if strict and report.problems():
        name = getattr(getattr(model, "default_cfg", None), "name", type(model).__name__)
        looks = f" (it looks like {mapped.guess} weights)" if mapped.guess not in (None, name) else ""
        raise WeightsError(f"{report.path} does not fit {name}{looks}: {report.problems()}")
    with torch.no_grad():
        for key, value in loaded.items():
            target[key].copy_(value)
    report.loaded = list(loaded)
    _apply_batchnorm(model, mapped.batchnorm, report)
    if report.skipped:
        warnings.warn(f"{report.path}: classifier/auxiliary head not loaded: "
                      f"{_listing(report.skipped, 'tensors')}", stacklevel=3)
    if report.problems():
        warnings.warn(f"{report.path}: partial load: {report.problems()}", stacklevel=3)
    log.info("%s", report)
    return report


def _fit_layout(model: nn.Module, key: str, value: torch.Tensor, src: str) -> tuple[torch.Tensor, str] | None:
    """A torch file's pointwise/depthwise kernel stored in another layout, converted (see :mod:`.layouts`)."""
    path, _, param = key.rpartition(".")
    if param != "weight":
        return None
    return fit_kernel(value, model.get_submodule(path), False, src)


def _apply_batchnorm(model: nn.Module, settings: dict[str, tuple[float, float]], report: LoadReport) -> None:
    """Give each BatchNorm the (eps, torch momentum) the file's model configuration states; note those that
    differ from the model's."""
    changed = []
    for path, (eps, momentum) in settings.items():
        bn = model.get_submodule(path)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        diffs = []
        if not math.isclose(bn.eps, eps, rel_tol=1e-6):
            diffs.append(f"eps {bn.eps:g} -> {eps:g}")
            bn.eps = eps
        if bn.momentum is not None and not math.isclose(bn.momentum, momentum, rel_tol=1e-6):
            diffs.append(f"momentum {bn.momentum:g} -> {momentum:g}")
            bn.momentum = momentum
        if diffs:
            changed.append(f"{path}: {', '.join(diffs)}")
    if changed:
        report.notes.append(f"BatchNorm conventions from the file's model configuration differ from the model's "
                            f"on {_listing(changed, 'layers')}; the file's applied")


def read_mapped(path: Path, fmt: str, model: nn.Module) -> Mapped:
    """Read the file at ``path`` (of format ``fmt``) and rename its tensors to ``model``'s keys."""
    if fmt in (formats.KERAS_H5, formats.KERAS_ARCHIVE):
        from .keras_h5 import batchnorm_settings, read_keras, read_keras_config
        from .keras_map import guess_keras_model, keras_to_convzoo

        archive = fmt == formats.KERAS_ARCHIVE
        layout, layers = read_keras(path, archive=archive)
        try:
            mapped = keras_to_convzoo(layers, model)
        except TypeError as exc:
            raise WeightsError(f"{path}: {exc}") from None
        mapped.layout = f"keras ({layout})"
        mapped.guess = guess_keras_model(layers)
        config = read_keras_config(path, archive=archive)
        for name, (eps, momentum) in batchnorm_settings(config or {}).items():
            if name in mapped.modules:
                mapped.batchnorm[mapped.modules[name]] = (eps, 1.0 - momentum)
        return mapped
    from .torch_state import guess_torch_model, read_safetensors, read_torch, state_to_convzoo

    if fmt == formats.TORCH:
        state = read_torch(path)
    else:
        state, _ = read_safetensors(path)
    mapped = state_to_convzoo(state, layout="convzoo checkpoint" if fmt == formats.CONVZOO else None)
    mapped.guess = guess_torch_model(state)
    return mapped


def _record_of_file(model: nn.Module, file: Path, fmt: str, mapped: Mapped) -> WeightRecord | None:
    """The record of a file no published record names (a convzoo checkpoint's stored one, if any)."""
    from ..registry import ModelCfg
    from .records import record_for_file

    cfg = getattr(model, "default_cfg", None)
    if not isinstance(cfg, ModelCfg):
        return None
    saved_mode = None
    if fmt == formats.CONVZOO:
        from .checkpoint import read_checkpoint

        info = read_checkpoint(file)
        if info.weights_meta is not None:
            return WeightRecord.from_dict(info.weights_meta)
        saved_mode = info.default_cfg.get("preprocessing")
    include_top = any(k.startswith(f"{cfg.classifier}.") for k in mapped.tensors)
    return record_for_file(cfg, file, f"file ({fmt})", include_top, saved_mode)


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load weights into ``model`` from ``path``, whatever wrote them, and return a :class:`LoadReport`.

    ``path`` is a Keras HDF5 file (legacy ``.h5`` or Keras 3 ``.weights.h5``), a ``.keras`` archive, a
    torchvision/timm/convzoo state dict (``.pth``/``.pt``, read with ``weights_only=True``; ``.safetensors``),
    a convzoo checkpoint (file or folder), or ``'imagenet'`` (``'imagenet:keras'``, ``'imagenet:torchvision'``,
    ... to pick a source) for the published weights of the model's architecture, downloaded once into
    ``$CONVZOO_HOME``. The format comes from the file's bytes. A model without a classifier, or with another
    number of classes, gets everything but the classifier (with a warning). With ``strict`` (default),
    anything else missing, left over or of the wrong shape raises :class:`WeightsError`, one line naming
    the tensors.

    A file named like a published one must match its record's hash (else :class:`ChecksumError`). The
    model gets the file's :class:`~.records.WeightRecord` as ``model.weights_meta`` (also in the report):
    the published record, else one built from the file. BatchNorm epsilon and momentum stated in a Keras
    file's model configuration are applied; torchvision Inception V3 weights get their ``transform_input``
    folded into the first convolution.
    """
    from ..models.base import FeatureExtractor

    if isinstance(model, FeatureExtractor):
        raise WeightsError("load weights into the whole model, then build the feature extractor")
    record = None
    if isinstance(path, str) and path.split(":", 1)[0] == "imagenet":
        from .hub import fetch_pretrained

        record, path = fetch_pretrained(model, path)
    fmt, file = formats.detect_format(path)
    if record is None:
        from .hub import verify

        record = find_record(file.name)
        if record is not None:
            try:
                verify(file, record.hash, str(file), record.size)
            except ChecksumError as exc:
                raise ChecksumError(f"{exc}; the file is named as the published {record.name} weights") from None
    mapped = read_mapped(file, fmt, model)
    report = apply_mapped(model, mapped, LoadReport(str(file), fmt, mapped.layout), strict=strict)
    if record is not None and record.transform_input:
        from .fold import TORCHVISION_INCEPTION_SCALE, TORCHVISION_INCEPTION_SHIFT, fold_input_affine

        folded = fold_input_affine(model, TORCHVISION_INCEPTION_SCALE, TORCHVISION_INCEPTION_SHIFT)
        report.notes.append(f"torchvision's transform_input folded into {folded}: the model takes "
                            f"{record.preprocessing!r} preprocessing")
    if record is None:
        record = _record_of_file(model, file, fmt, mapped)
    report.record = record
    if record is not None:
        model.weights_meta = record
    return report
