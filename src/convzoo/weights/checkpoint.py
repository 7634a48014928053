"""convzoo's own checkpoint: one safetensors file whose metadata header holds a JSON config.

The config records the registered model name, the :func:`~convzoo.create_model` arguments that rebuild it,
the class names, the model's ``default_cfg`` (preprocessing, input size, ...), the record of the weights it
was loaded from (``model.weights_meta``, see :mod:`.records`) and a free-form ``extra`` dict, so
:func:`load_checkpoint` rebuilds the model in one call. Files are written atomically: a temporary
file in the same folder, flushed to disk, then renamed over the target. Optimiser or trainer state does not
belong here; keep it in its own file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, WeightsError
from ..registry import ModelCfg, create_model, get_model_cfg, model_kwargs_from_json
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
    read from the model itself: head, classes, input channels and size, dropout, auxiliary classifier."""
    cfg = model.default_cfg
    registered = get_model_cfg(cfg.name)
    args: dict[str, Any] = {}
    if model.global_pool == "":
        args["include_top"] = False
    else:
        if model.num_classes != registered.num_classes:
            args["num_classes"] = model.num_classes
        if model.global_pool != "avg":
            args["pooling"] = model.global_pool
    if model.in_chans != 3:
        args["in_chans"] = model.in_chans
    if tuple(cfg.input_size[1:]) != tuple(registered.input_size[1:]):
        args["input_size"] = list(cfg.input_size[1:])
    if model.drop_rate != registered.drop_rate:
        args["drop_rate"] = model.drop_rate
    if getattr(model, "AuxLogits", None) is not None:
        args["aux_logits"] = True
    return args


def _check_rebuilds(model: nn.Module, name: str, args: dict[str, Any]) -> None:
    with torch.device("meta"):
        rebuilt = create_model(name, **model_kwargs_from_json(name, args)).state_dict()
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in rebuilt.items()}
    if have != want:
        diff = sorted(set(have.items()) ^ set(want.items()))
        raise CheckpointError(f"create_model({name!r}, **{args}) does not rebuild this model (first difference: "
                              f"{diff[0][0]}); pass model_args= with the arguments it was built with")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_checkpoint(model: nn.Module, path: str | Path, class_names: Sequence[str] | None = None,
                    extra: dict[str, Any] | None = None, model_args: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s tensors and its rebuild config to ``path`` (an existing folder gets
    ``model.safetensors``) atomically; returns the file written.

    ``class_names``: one per output class. ``extra``: any JSON-serialisable metadata (epoch, metrics, ...).
    ``model_args``: the ``create_model`` arguments, when they cannot be read off the model, as JSON (tables
    as lists and objects, read back by :func:`~convzoo.registry.model_kwargs_from_json`); the model is
    rebuilt on the meta device to check them, and a mismatch is a :class:`CheckpointError`.
    """
    from safetensors.torch import save

    from .. import __version__

    from ..models.base import ConvNet

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
                  default_cfg={k: v for k, v in cfg.as_dict().items() if k != "kwargs"}, extra=extra or {},
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
    _write_atomic(path, save(tensors, metadata=metadata))
    return path


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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved at ``path`` and load its tensors (every one must fit).

    The model's ``default_cfg`` is restored, ``model.class_names`` is set (None when none were saved),
    ``model.weights_meta`` holds the saved weight record (None when none was saved) and
    ``model.checkpoint_info`` the :class:`CheckpointInfo` (``extra`` included). Like ``create_model``,
    it returns the model in training mode; call ``.eval()`` for inference.
    """
    from .loading import LoadReport, apply_mapped
    from .records import WeightRecord
    from .torch_state import read_safetensors, state_to_convzoo

    info = read_checkpoint(path)
    model = create_model(info.model, **model_kwargs_from_json(info.model, info.model_args))
    try:
        state, _ = read_safetensors(info.path)
        apply_mapped(model, state_to_convzoo(state, layout="convzoo checkpoint"),
                     LoadReport(str(info.path), formats.CONVZOO, "convzoo checkpoint"), lenient_head=False)
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None
    names = {f.name for f in fields(ModelCfg)} - {"name", "kwargs"}
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in info.default_cfg.items() if k in names}
    model.default_cfg = model.pretrained_cfg = replace(model.default_cfg, **saved)
    model.class_names = info.class_names
    try:
        model.weights_meta = None if info.weights_meta is None else WeightRecord.from_dict(info.weights_meta)
    except TypeError as exc:
        raise CheckpointError(f"{info.path}: broken weight record ({exc})") from None
    model.checkpoint_info = info
    return model.to(device)
