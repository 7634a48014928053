"""One way in: :func:`load_weights` reads any supported file into a convzoo model, strictly, and reports;
:func:`load_checkpoint` rebuilds the model a convzoo checkpoint holds."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, WeightsError
from ..models.base import FeatureExtractor
from ..models.spec import ModelCfg, WeightRecord
from ..preprocess import Normalize, recorded_normalize
from ..registry import build_model, model_kwargs_from_json
from . import formats
from .checkpoint import CheckpointInfo, read_checkpoint
from .fold import fold_input_affine
from .hub import fetch_pretrained
from .keras_h5 import KerasFile, batchnorm_settings
from .keras_map import classifier_to_convzoo, guess_keras_model, keras_to_convzoo
from .layouts import TORCH_DEPTHWISE, TORCH_POINTWISE, fit_kernel
from .mapping import FileHead, Mapped
from .records import published_record, record_for_file
from .source import WeightsFile, keras_structure, read_weights, torch_head
from .torch_state import guess_torch_model, read_safetensors, state_to_convzoo

log = logging.getLogger(__name__)

_SHOWN = 4


@dataclass
class LoadReport:
    """What :func:`load_weights` did: the file, its ``format`` and key ``layout``, the convzoo keys
    ``loaded``, the classifier tensors ``skipped`` (with why), and ``missing``/``unexpected``/``mismatched``
    entries (empty after a strict load; with ``strict=False`` what was left out), ``notes`` (conversions,
    BatchNorm conventions, folds, layers left out) and the :class:`~convzoo.models.spec.WeightRecord`
    attached to the model. What the file says about the model around the weights: its ``head`` (classes,
    pooling, dropout, activation: :meth:`FileHead.as_dict`), the Keras models it nests the application in
    (``nesting``, outermost first; empty when the file is the application), and for a torch checkpoint the
    entry the state dict was taken from (``container``, e.g. ``'state_dict_ema'``) and the wrapper prefixes
    removed from its keys (``prefixes``, e.g. ``['module.', '_orig_mod.']``)."""

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
    head: dict[str, Any] | None = None
    nesting: list[str] = field(default_factory=list)
    container: str | None = None
    prefixes: list[str] = field(default_factory=list)

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
        if self.container or self.prefixes:
            taken = [f"from entry '{self.container}'"] if self.container else []
            taken += [f"prefixes {', '.join(repr(p) for p in self.prefixes)} removed"] if self.prefixes else []
            line += f"; {', '.join(taken)}"
        if self.nesting:
            line += f"; application nested as {' > '.join(self.nesting)}"
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


@dataclass(frozen=True)
class _Heads:
    """What a lenient load may skip: tensors under the classifiers' prefixes, and the whole auxiliary head
    (``aux``, e.g. ``'AuxLogits.'``) when the model was built without it."""

    classifiers: tuple[str, ...] = ()
    aux: str | None = None
    model_has_aux: bool = False

    def skippable(self, key: str, in_model: bool) -> bool:
        """Whether ``key`` (present in the model or not) belongs to a head a lenient load may skip."""
        if key.startswith(self.classifiers):
            return True
        return self.aux is not None and key.startswith(self.aux) and (in_model or not self.model_has_aux)


def _heads(model: nn.Module, target: dict[str, torch.Tensor]) -> _Heads:
    cfg = getattr(model, "default_cfg", None)
    if not isinstance(cfg, ModelCfg):
        return _Heads()
    aux = cfg.aux_classifier.rpartition(".")[0] + "." if cfg.aux_classifier else None
    return _Heads(tuple(f"{c}." for c in (cfg.classifier, cfg.aux_classifier) if c), aux,
                  aux is not None and any(k.startswith(aux) for k in target))


def _sort_tensors(model: nn.Module, mapped: Mapped, target: dict[str, torch.Tensor], heads: _Heads,
                  report: LoadReport) -> dict[str, torch.Tensor]:
    """The tensors of ``mapped`` that fit ``model`` (kernels stored in another layout converted); what does
    not fit goes into ``report`` (skipped heads, unexpected and mismatched tensors)."""
    keras_source = mapped.layout.startswith("keras")
    loaded = {}
    for key, (value, origin) in mapped.tensors.items():
        is_head = heads.skippable(key, in_model=False)
        src = origin if origin == f"'{key}'" else f"{origin} -> {key}"
        if key not in target:
            (report.skipped if is_head else report.unexpected).append(src + (" (not in the model)" if is_head else ""))
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
    return loaded


def apply_mapped(model: nn.Module, mapped: Mapped, report: LoadReport, strict: bool = True,
                 lenient_head: bool = True) -> LoadReport:
    """Copy ``mapped`` into ``model``. Classifier (and auxiliary classifier) tensors that do not fit, because
    the model has no classifier or another number of classes, are skipped with a warning when
    ``lenient_head``; anything else missing, unexpected or of another shape raises one :class:`WeightsError`
    line when ``strict`` (else it is left out, reported and warned about)."""
    target = model.state_dict(keep_vars=True)
    heads = _heads(model, target) if lenient_head else _Heads()
    loaded = _sort_tensors(model, mapped, target, heads, report)
    report.unexpected.extend(mapped.unplaced)
    report.mismatched.extend(mapped.mismatched)
    for key in target:
        if key in mapped.tensors or key.endswith("num_batches_tracked"):
            continue
        if heads.skippable(key, in_model=True):
            report.skipped.append(f"{key} (not in the file; left as initialised)")
        else:
            report.missing.append(key)
    report.notes.extend(mapped.notes)
    if strict and report.problems():
        raise _misfit(model, mapped, report)
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


def _misfit(model: nn.Module, mapped: Mapped, report: LoadReport) -> WeightsError:
    """The error of a strict load that does not fit: the entries that do not, or, for a file that looks like
    another model's, only how many (the lists are in the error's ``report`` and the log)."""
    name = getattr(getattr(model, "default_cfg", None), "name", type(model).__name__)
    if mapped.guess in (None, name):
        error = WeightsError(f"{report.path} does not fit {name}: {report.problems()}")
    else:
        parts = [f"{len(n)} {what}" for what, n in (("missing", report.missing), ("unexpected", report.unexpected),
                                                     ("mismatched", report.mismatched)) if n]
        counts = " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
        error = WeightsError(f"{report.path} does not fit {name} (it looks like {mapped.guess} weights): {counts} "
                             f"tensors; load it into {mapped.guess}")
        log.info("%s does not fit %s: %s", report.path, name, report.problems())
    error.report = report  # type: ignore[attr-defined]
    return error


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


def _keras_mapped(file: KerasFile, model: nn.Module) -> Mapped:
    """The application's layers of a Keras file, and the Dense classifying its pooled features, as tensors
    under ``model``'s keys; the file's head, nesting and preprocessing alongside."""
    structure = keras_structure(file, model)
    layers = [layer for layer in structure.app.weighted() if layer is not structure.classifier]
    try:
        mapped = keras_to_convzoo(layers, model)
        if structure.classifier is not None:
            classifier_to_convzoo(structure.classifier, model, mapped)
    except WeightsError as exc:
        raise WeightsError(f"{file.path}: {exc}") from None
    mapped.layout = f"keras ({file.layout})"
    mapped.guess = guess_keras_model(layers)
    for name, (eps, momentum) in batchnorm_settings(file.config or {}).items():
        if name in mapped.modules:
            mapped.batchnorm[mapped.modules[name]] = (eps, 1.0 - momentum)
    mapped.head, mapped.nesting = structure.head, structure.nesting
    mapped.preprocessing, mapped.preprocessing_layers = structure.preprocessing, structure.preprocessing_layers
    mapped.notes.extend(structure.notes)
    return mapped


def read_mapped(file: WeightsFile, model: nn.Module) -> Mapped:
    """The tensors of the weights ``file`` renamed to ``model``'s keys (see :func:`read_weights`)."""
    if file.keras is not None:
        return _keras_mapped(file.keras, model)
    state = file.state
    mapped = state_to_convzoo(state.tensors, layout="convzoo checkpoint" if file.format == formats.CONVZOO else None)
    mapped.guess = guess_torch_model(state.tensors)
    mapped.container, mapped.prefixes = state.container, list(state.prefixes)
    mapped.notes.extend(state.notes)
    cfg = getattr(model, "default_cfg", None)
    if isinstance(cfg, ModelCfg):
        mapped.head = torch_head(state, cfg.classifier)
    return mapped


def _record_of_file(model: nn.Module, file: Path, fmt: str, mapped: Mapped) -> WeightRecord | None:
    """The record of a file that is no published one (a convzoo checkpoint's stored one, if any)."""
    cfg = getattr(model, "default_cfg", None)
    if not isinstance(cfg, ModelCfg):
        return None
    saved_mode = None
    if fmt == formats.CONVZOO:
        info = read_checkpoint(file)
        if info.weights_meta is not None:
            return WeightRecord.from_dict(info.weights_meta)
        saved_mode = info.default_cfg.get("preprocessing")
    include_top = any(k.startswith(f"{cfg.classifier}.") for k in mapped.tensors)
    return record_for_file(cfg, file, f"file ({fmt})", include_top, saved_mode, stats=mapped.preprocessing)


def _check_head(model: nn.Module, head: FileHead | None, report: LoadReport) -> None:
    """Refuse a classifier that would be loaded behind another pooling than the file's; note other
    differences between the file's head and the model's."""
    pool = getattr(model, "global_pool", None)
    if head is None or not head.classes or pool is None:
        return
    loads = getattr(model, "num_classes", None) == head.classes
    if head.pooling is not None and head.pooling != pool:
        if loads:
            raise WeightsError(f"{report.path}: its classifier follows {head.pooling} pooling, the model pools "
                               f"with {pool or 'none'}; build it with global_pool='{head.pooling}'")
        report.notes.append(f"the file pools with {head.pooling} before its classifier, the model with "
                            f"{pool or 'none'}")
    drop = getattr(model, "drop_rate", None)
    if loads and head.dropout is not None and drop is not None and not math.isclose(drop, head.dropout):
        report.notes.append(f"the file's dropout before its classifier is {head.dropout:g}, the model's drop_rate "
                            f"{drop:g} (kept; it acts only in training)")


def load_weights(model: nn.Module, path: str | Path | WeightsFile, strict: bool = True) -> LoadReport:
    """Load weights into ``model`` from ``path``, whatever wrote them, and return a :class:`LoadReport`.

    ``path`` is a Keras HDF5 file (legacy ``.h5`` or Keras 3 ``.weights.h5``), a ``.keras`` archive, a
    torchvision/timm/convzoo state dict (``.pth``/``.pt``, read with ``weights_only=True``; ``.safetensors``),
    a convzoo checkpoint (file or folder), or ``'imagenet'`` (``'imagenet:keras'``, ``'imagenet:torchvision'``,
    ... to pick a source) for the published weights of the model's architecture, downloaded once into
    ``$CONVZOO_HOME``, or a :class:`WeightsFile` already read. The format comes from the file's bytes.

    A Keras model that wraps the application (nested in ``Sequential`` or functional models, any depth, or
    with layers added to the application's own model) loads its application and the Dense on the pooled
    features as the classifier; its Rescaling and Normalization layers are folded into the record's
    preprocessing, layers that do nothing at inference are noted, and heads or layers convzoo does not have
    are a :class:`WeightsError` (see :mod:`.keras_model`). A torch checkpoint as training code writes it
    (``{'model': ...}``, ``{'state_dict_ema': ...}``, ... EMA weights preferred; ``module.`` and
    ``_orig_mod.`` prefixes) is unwrapped (see :func:`~.torch_state.unwrap_state`). A classifier that follows
    another pooling than the model's is a :class:`WeightsError`. A model without a classifier, or with
    another number of classes, gets everything but the classifier (with a warning). With ``strict``
    (default), anything else missing, left over or of the wrong shape raises :class:`WeightsError`, one
    line (for a file that looks like another model's, the counts; the entries are in the error's
    ``report``).

    The model gets the file's :class:`~convzoo.models.spec.WeightRecord` as ``model.weights_meta`` (also in
    the report): the published record the file is (by its contents, see :mod:`.records`; a file named like a
    published one must match its hash, else :class:`~convzoo.errors.ChecksumError`), else one built from the
    file. BatchNorm epsilon and momentum stated in a Keras file's model configuration are applied; a
    published record's ``input_affine`` (torchvision's Inception V3 ``transform_input``) is folded into the
    first convolution.
    """
    if isinstance(model, FeatureExtractor):
        raise WeightsError("load weights into the whole model, then build the feature extractor")
    record = None
    if isinstance(path, str) and path.split(":", 1)[0] == "imagenet":
        record, path = fetch_pretrained(model, path)
    file = path if isinstance(path, WeightsFile) else read_weights(path)
    if record is None:
        cfg = getattr(model, "default_cfg", None)
        record = published_record(file.path, cfg.name if isinstance(cfg, ModelCfg) else None)
    mapped = read_mapped(file, model)
    report = LoadReport(str(file.path), file.format, mapped.layout,
                        head=None if mapped.head is None else mapped.head.as_dict(), nesting=mapped.nesting,
                        container=mapped.container, prefixes=mapped.prefixes)
    _check_head(model, mapped.head, report)
    apply_mapped(model, mapped, report, strict=strict)
    if record is not None and record.input_affine is not None:
        folded = fold_input_affine(model, *record.input_affine)
        report.notes.append(f"the publisher's transform_input folded into {folded} ({record.name}): the model "
                            f"takes {record.preprocessing!r} preprocessing")
    report.record = record if record is not None else _record_of_file(model, file.path, file.format, mapped)
    if report.record is not None:
        model.weights_meta = report.record
    return report


def _trained_record(info: CheckpointInfo, model: nn.Module) -> WeightRecord | None:
    """``model.weights_meta`` of a checkpoint, stating the statistics it was trained with. Checkpoints of
    convzoo's trainer from before runs recorded one preprocessing hold those in ``extra`` (``mean``, ``std``
    in pixel units, ``bgr``), beside the start weights' record: the statistics win. Raises
    :class:`CheckpointError` when they differ from what the checkpoint would otherwise use and no record can
    state them."""
    meta = model.weights_meta
    if not {"mean", "std"} <= info.extra.keys():
        return meta
    try:
        trained = Normalize.matching(tuple(info.extra["mean"]), tuple(info.extra["std"]),
                                     bool(info.extra.get("bgr", False)))
        if trained == recorded_normalize(model):
            return meta
        mode, mean, std = trained.record()
    except (TypeError, ConfigError) as exc:
        raise CheckpointError(f"{info.path}: unusable training statistics in its metadata ({exc})") from None
    if meta is None:
        raise CheckpointError(f"{info.path}: trained with {trained.describe()} (its metadata) but it has no weight "
                              f"record to state it; load it with load_weights and give the preprocessing yourself")
    return replace(meta, preprocessing=mode, mean=tuple(mean), std=tuple(std))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved at ``path`` and load its tensors (every one must fit).

    The model's ``default_cfg`` is restored, ``model.class_names`` is set (None when none were saved),
    ``model.weights_meta`` holds the saved weight record (None when none was saved) and
    ``model.checkpoint_info`` the :class:`~.checkpoint.CheckpointInfo` (``extra`` included). Like
    ``create_model``, it returns the model in training mode; call ``.eval()`` for inference. Raises
    :class:`CheckpointError`.
    """
    info = read_checkpoint(path)
    model = build_model(info.model, **model_kwargs_from_json(info.model, info.model_args))
    try:
        state, _ = read_safetensors(info.path)
        apply_mapped(model, state_to_convzoo(state, layout="convzoo checkpoint"),
                     LoadReport(str(info.path), formats.CONVZOO, "convzoo checkpoint"), lenient_head=False)
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None
    names = {f.name for f in fields(ModelCfg)} - {"name", "kwargs", "builder"}
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in info.default_cfg.items() if k in names}
    model.default_cfg = model.pretrained_cfg = replace(model.default_cfg, **saved)
    model.class_names = info.class_names
    try:
        model.weights_meta = None if info.weights_meta is None else WeightRecord.from_dict(info.weights_meta)
    except (TypeError, ConfigError) as exc:
        raise CheckpointError(f"{info.path}: broken weight record ({exc})") from None
    model.weights_meta = _trained_record(info, model)
    model.checkpoint_info = info
    return model.to(device)
