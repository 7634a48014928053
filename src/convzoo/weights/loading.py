"""One way in: :func:`load_weights` reads any supported file into a convzoo model, strictly, and reports."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from . import formats
from .mapping import Mapped

log = logging.getLogger(__name__)

_SHOWN = 4
_AUX = "AuxLogits."


@dataclass
class LoadReport:
    """What :func:`load_weights` did: the file, its ``format`` and key ``layout``, the convzoo keys
    ``loaded``, the classifier tensors ``skipped`` (with why), and ``missing``/``unexpected``/``mismatched``
    entries (empty after a strict load; with ``strict=False`` what was left out)."""

    path: str
    format: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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
            msg = f"{src}: model {_shape(target[key])}, file {_shape(value)}"
            (report.skipped if is_head else report.mismatched).append(msg)
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
    if report.skipped:
        warnings.warn(f"{report.path}: classifier/auxiliary head not loaded: "
                      f"{_listing(report.skipped, 'tensors')}", stacklevel=3)
    if report.problems():
        warnings.warn(f"{report.path}: partial load: {report.problems()}", stacklevel=3)
    log.info("%s", report)
    return report


def read_mapped(path: Path, fmt: str, model: nn.Module) -> Mapped:
    """Read the file at ``path`` (of format ``fmt``) and rename its tensors to ``model``'s keys."""
    if fmt in (formats.KERAS_H5, formats.KERAS_ARCHIVE):
        from .keras_h5 import read_keras
        from .keras_map import keras_to_convzoo

        from .keras_map import guess_keras_model

        layout, layers = read_keras(path, archive=fmt == formats.KERAS_ARCHIVE)
        try:
            mapped = keras_to_convzoo(layers, model)
        except TypeError as exc:
            raise WeightsError(f"{path}: {exc}") from None
        mapped.layout = f"keras ({layout})"
        mapped.guess = guess_keras_model(layers)
        return mapped
    from .torch_state import guess_torch_model, read_safetensors, read_torch, state_to_convzoo

    if fmt == formats.TORCH:
        state = read_torch(path)
    else:
        state, _ = read_safetensors(path)
    mapped = state_to_convzoo(state, layout="convzoo checkpoint" if fmt == formats.CONVZOO else None)
    mapped.guess = guess_torch_model(state)
    return mapped


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
    """
    from ..models.base import FeatureExtractor

    if isinstance(model, FeatureExtractor):
        raise WeightsError("load weights into the whole model, then build the feature extractor")
    pretrained = None
    if isinstance(path, str) and path.split(":", 1)[0] == "imagenet":
        from .hub import fetch_pretrained

        pretrained, path = fetch_pretrained(model, path)
    fmt, file = formats.detect_format(path)
    mapped = read_mapped(file, fmt, model)
    report = apply_mapped(model, mapped, LoadReport(str(file), fmt, mapped.layout), strict=strict)
    if pretrained is not None and pretrained.preprocessing and hasattr(model, "default_cfg"):
        from dataclasses import replace

        if model.default_cfg.preprocessing != pretrained.preprocessing:
            model.default_cfg = model.pretrained_cfg = replace(model.default_cfg,
                                                               preprocessing=pretrained.preprocessing)
            report.notes.append(f"these weights expect {pretrained.preprocessing!r} preprocessing; "
                                "default_cfg updated")
    return report
