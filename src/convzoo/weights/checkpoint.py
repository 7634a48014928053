"""convzoo's own checkpoint: one safetensors file whose metadata header holds a JSON config.

The config records the registered model name, the :func:`~convzoo.create_model` arguments that rebuild it,
the class names, the model's ``default_cfg`` (preprocessing, input size, ...), the record of its weights
(``model.weights_meta``, see :mod:`.records`: the file they were loaded from, or for a training run's
checkpoint the run's own, with the run's preprocessing) and a free-form ``extra`` dict, so
:func:`~convzoo.weights.loading.load_checkpoint` rebuilds the model in one call. Files are written atomically
(:func:`convzoo.utils.fileio.atomic_write`). Optimiser or trainer state does not belong here; keep it in its
own file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save
from torch import nn

from ..errors import CheckpointError, WeightsError
from ..models.base import ConvNet
from ..models.spec import ModelCfg
from ..registry import build_model, get_model_cfg, model_kwargs_from_json
from ..utils.fileio import atomic_write
from ..version import __version__
from . import formats

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's header says: the ``model`` name, the ``model_args`` for ``create_model``,
    ``class_names`` (or None), the saved ``default_cfg`` (without builder kwargs), the ``extra`` dict,
    the convzoo version that wrote it, and the weight record (``WeightRecord.as_dict()``; None when the
    model had none)."""

    path: Path
    model: str
    model_args: dict[str, Any]
    class_names: list[str] | None
    default_cfg: dict[str, Any]
    extra: dict[str, Any]
    convzoo_version: str
    weights_meta: dict[str, Any] | None = None


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)


def model_args_of(model: nn.Module) -> dict[str, Any]:
    """The ``create_model`` keyword arguments (beyond the name) that rebuild ``model``'s architecture,
    read from the model itself: head (classes, pooling, activation), input channels and size, dropout,
    auxiliary classifier."""
    cfg = model.default_cfg
    registered = get_model_cfg(cfg.name)
    args: dict[str, Any] = {}
    if model.global_pool == "":
        args["include_top"] = False
    else:
        if model.num_classes != registered.num_classes:
            args["num_classes"] = model.num_classes
        if model.global_pool != "avg":
            args["global_pool"] = model.global_pool
        if getattr(model, "classifier_activation", None) is not None:
            args["classifier_activation"] = model.classifier_activation
    if model.in_chans != 3:
        args["in_chans"] = model.in_chans
    if tuple(cfg.input_size[1:]) != tuple(registered.input_size[1:]):
        args["input_size"] = list(cfg.input_size[1:])
    if model.drop_rate != registered.drop_rate:
        args["drop_rate"] = model.drop_rate
    if model.aux_logits:
        args["aux_logits"] = True
    return args


def _check_rebuilds(model: nn.Module, name: str, args: dict[str, Any]) -> None:
    with torch.device("meta"):
        rebuilt = build_model(name, **model_kwargs_from_json(name, args)).state_dict()
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in rebuilt.items()}
    if have != want:
        diff = sorted(set(have.items()) ^ set(want.items()))
        raise CheckpointError(f"create_model({name!r}, **{args}) does not rebuild this model (first difference: "
                              f"{diff[0][0]}); pass model_args= with the arguments it was built with")


def saved_cfg(cfg: ModelCfg) -> dict[str, Any]:
    """The stored fields of ``cfg`` that a checkpoint keeps (not the builder or its arguments)."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("kwargs", "builder")}


def save_checkpoint(model: nn.Module, path: str | Path, class_names: Sequence[str] | None = None,
                    extra: dict[str, Any] | None = None, model_args: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s tensors and its rebuild config to ``path`` (an existing folder gets
    ``model.safetensors``) atomically; returns the file written.

    ``class_names``: one per output class. ``extra``: any JSON-serialisable metadata (epoch, metrics, ...).
    ``model_args``: the ``create_model`` arguments, when they cannot be read off the model, as JSON (tables
    as lists and objects, read back by :func:`~convzoo.registry.model_kwargs_from_json`); the model is
    rebuilt on the meta device to check them, and a mismatch is a :class:`CheckpointError`. A file that
    cannot be written is an :class:`~convzoo.errors.OutputError`.
    """
    model = _unwrap(model)
    cfg = getattr(model, "default_cfg", None)
    if not isinstance(model, ConvNet) or not isinstance(cfg, ModelCfg):
        raise CheckpointError("save_checkpoint needs a whole model built by create_model (not a feature extractor)")
    args = model_args_of(model) if model_args is None else dict(model_args)
    _check_rebuilds(model, cfg.name, args)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if model.num_classes and len(class_names) != model.num_classes:
            raise CheckpointError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    meta = getattr(model, "weights_meta", None)
    config = dict(model=cfg.name, model_args=args, class_names=class_names,
                  default_cfg=saved_cfg(cfg), extra=extra or {},
                  weights_meta=None if meta is None else meta.as_dict())
    try:
        header = json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint config is not JSON-serialisable ({exc}); extra must hold plain "
                              "numbers, strings, lists and dicts") from None
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": "convzoo-checkpoint", "format_version": str(FORMAT_VERSION),
                "convzoo_version": __version__, formats.CHECKPOINT_KEY: header}
    path = Path(path)
    if path.is_dir():
        path = path / formats.CHECKPOINT_FILE
    return atomic_write(path, save(tensors, metadata=metadata))


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    """The config of the checkpoint at ``path`` (file, or folder holding one), without loading tensors."""
    try:
        fmt, file = formats.detect_format(path)
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None
    if fmt != formats.CONVZOO:
        raise CheckpointError(f"{file}: not a convzoo checkpoint ({fmt}); load it with load_weights")
    meta = formats.safetensors_metadata(file) or {}
    try:
        config = json.loads(meta[formats.CHECKPOINT_KEY])
        weights_meta = config.get("weights_meta")
        return CheckpointInfo(file, config["model"], dict(config["model_args"]), config["class_names"],
                              dict(config["default_cfg"]), dict(config["extra"]), meta.get("convzoo_version", "?"),
                              None if weights_meta is None else dict(weights_meta))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: broken checkpoint config ({type(exc).__name__}: {exc})") from None
