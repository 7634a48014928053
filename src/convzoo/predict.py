"""Predictions on photos: the model a name and/or a weights file give, class probabilities for image files, and
top-k labels the way Keras' ``decode_predictions`` gives them. ``convzoo predict`` (:mod:`convzoo.cli.predict`)
prints them."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from .data.imagenet import imagenet_classes
from .data.images import IMAGE_EXTENSIONS
from .data.transforms import ImageTransform
from .errors import ConfigError, ImageError
from .factory import create_model
from .registry import get_model_cfg
from .runtime import inference_model
from .utils.fileio import complete_folder
from .weights import load_checkpoint
from .weights.formats import CHECKPOINT_FILE, CONVZOO, detect_format

Prediction = tuple[str, str, float]
# The class list of the published ImageNet weights (WeightRecord.classes).
IMAGENET = "imagenet-1k"


def decode_predictions(probs: torch.Tensor, top: int = 5, class_names: Sequence[str] | None = None
                       ) -> list[list[Prediction]]:
    """For each row of ``probs`` (N, classes), the ``top`` classes as ``(class_id, name, probability)``.

    With 1,000 classes and no ``class_names`` these are ImageNet's ``('n02504458', 'African_elephant', p)``;
    with ``class_names`` (a model trained on other classes) the id is the class index as a string.
    """
    probs = torch.as_tensor(probs)
    if probs.dim() != 2:
        raise ConfigError(f"expected probabilities of shape (N, classes), got {tuple(probs.shape)}")
    n_classes = probs.shape[1]
    if not 1 <= top <= n_classes:
        raise ConfigError(f"top must lie in [1, {n_classes}], got {top}")
    if class_names is None:
        if n_classes != 1000:
            raise ConfigError(f"expected 1000 ImageNet classes or class names, got {n_classes} classes")
        labels = imagenet_classes()
    else:
        if len(class_names) != n_classes:
            raise ConfigError(f"expected {n_classes} class names, got {len(class_names)}")
        labels = [(str(i), str(c)) for i, c in enumerate(class_names)]
    values, indices = probs.topk(top, dim=1)
    return [[(*labels[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]


def class_labels(model: nn.Module, names: Sequence[str] | None = None) -> list[str] | None:
    """What :func:`decode_predictions` names ``model``'s classes with: ``names`` (one per class, else
    :class:`ConfigError`), else None (ImageNet's wnids and names) for a head of ImageNet's 1,000 classes
    whose weights do not record another class list, else the class indices as strings."""
    n_classes = model.num_classes
    if names is not None:
        if len(names) != n_classes:
            raise ConfigError(f"expected {n_classes} class names (one per class of the model), got {len(names)}")
        return list(names)
    meta = getattr(model, "weights_meta", None)
    if n_classes == 1000 and getattr(meta, "classes", None) in (None, IMAGENET):
        return None
    return [str(i) for i in range(n_classes)]


def expand_inputs(items: Sequence[str]) -> list[Path]:
    """Image paths from files, folders (their image files, sorted) and glob patterns, in the order given."""
    paths: list[Path] = []
    for item in items:
        if any(c in item for c in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise ImageError(f"expected images matching {item!r}, found none")
            paths.extend(Path(m) for m in matches if Path(m).is_file())
        elif Path(item).is_dir():
            found = sorted(p for p in Path(item).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ImageError(f"expected image files in folder {item}, found none")
            paths.extend(found)
        else:
            paths.append(Path(item))
    return paths


def _checkpoint_path(weights: str) -> str:
    """``weights``, or for a checkpoint folder interrupted between the two renames that replace it (a run's
    ``best/`` or ``last/``), the complete previous version that ``eval`` and ``--resume`` also use."""
    path = Path(weights)
    if path.is_file():
        return weights
    found = complete_folder(path, (CHECKPOINT_FILE,))
    return weights if found is None else str(found)


def resolve_model(model_name: str | None, weights: str | None) -> tuple[nn.Module, list[str] | None]:
    """A model in eval mode, with the classifier of its weights, and the class names they give (None when
    they give none), from a registry name and/or a weights file, checkpoint or ``'imagenet'``.

    An inference verb never answers with a random classifier: no ``weights``, or weights without a
    classifier, is a :class:`ConfigError` (see :func:`resolve_features_model` for a model without one).
    Raises :class:`ConfigError` and the errors of loading."""
    model, names = resolve_features_model(model_name, weights)
    if model.num_classes == 0:
        raise ConfigError(f"{weights} holds no classifier (no top): nothing to predict classes with; load it "
                          "into a model with its own classifier, or use it as a feature extractor")
    return model, names


def resolve_features_model(model_name: str | None, weights: str | None) -> tuple[nn.Module, list[str] | None]:
    """As :func:`resolve_model`, but weights without a classifier give the model without one (its output:
    the pooled features (N, C))."""
    if model_name is not None:
        get_model_cfg(model_name)
    if weights is None:
        raise ConfigError("expected --weights (a weights file, a convzoo checkpoint or 'imagenet'): without "
                          "weights the classifier would be random")
    if not weights.startswith("imagenet"):
        weights = _checkpoint_path(weights)
        if detect_format(weights)[0] == CONVZOO:
            model = load_checkpoint(weights)
            if model_name is not None and model_name != model.default_cfg.name:
                raise ConfigError(f"--model {model_name} given, but the checkpoint holds {model.default_cfg.name}")
            return model.eval(), model.class_names
    if model_name is None:
        raise ConfigError("expected --model NAME (or a convzoo checkpoint as --weights)")
    return create_model(model_name, weights=weights).eval(), None


def iter_predictions(model: nn.Module, paths: Sequence[Path], *, batch_size: int = 8, mode: str | None = None,
                     runtime: str = "eager", device: torch.device | str = "cpu", precision: str | None = None,
                     calibration: Sequence[torch.Tensor] | None = None) -> Iterator[torch.Tensor]:
    """Class probabilities (batch, classes, float32, on the CPU) for the image files at ``paths``, one batch of
    ``batch_size`` at a time (see :func:`predict_files`)."""
    transform = ImageTransform.from_model(model, mode)
    forward = inference_model(model, runtime, precision, calibration, device=device)
    probabilities = getattr(model, "classifier_activation", None) == "softmax"
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            out = forward(transform(paths[start:start + batch_size]))
            yield out if probabilities else out.softmax(1)


def predict_files(model: nn.Module, paths: Sequence[Path], *, batch_size: int = 8, mode: str | None = None,
                  runtime: str = "eager", device: torch.device | str = "cpu", precision: str | None = None,
                  calibration: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Class probabilities (N, classes, float32, on the CPU) for the image files at ``paths``, preprocessed as
    recorded with the model's weights (``model.weights_meta``, else its ``default_cfg``); ``mode`` overrides
    the preprocessing. :func:`convzoo.runtime.inference_model` runs the model: ``runtime`` 'eager' (a
    BatchNorm-folded, channels-last copy on ``device``), 'onnxruntime' or 'openvino' (the CPU only), in
    ``precision`` (None: bf16 where it pays, else fp32; int8 calibrated on ``calibration``). ``model`` is left
    as it is."""
    return torch.cat(list(iter_predictions(model, paths, batch_size=batch_size, mode=mode, runtime=runtime,
                                           device=device, precision=precision, calibration=calibration)))
