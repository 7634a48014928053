"""Preprocessing as Keras names it: ``'tf'``, ``'caffe'``, ``'torch'``, plus the seed's ``'cifar'``.

The functions take RGB pixels in 0..255 (:func:`preprocess_input` says which shapes and types). Which mode a
model takes is recorded with its weights (``model.weights_meta``, a :class:`~convzoo.models.spec.WeightRecord`); a model
without a record takes its ``default_cfg``'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
CIFAR_MEAN = (125.307, 122.95, 113.865)
CIFAR_STD = (62.9932, 62.0887, 66.7048)
MODES = ("tf", "caffe", "torch", "cifar")
# A weights record's own per-channel mean and std (RGB), e.g. folded from a Keras model's Rescaling and
# Normalization layers: no mode of its own, the record's numbers are the preprocessing.
CUSTOM = "custom"


def mode_stats(mode: str) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """The per-channel mean and std (0..255 pixel units, in the channel order the model takes) that ``mode``
    normalises with, and whether that order is BGR."""
    if mode == "tf":
        return (127.5,) * 3, (127.5,) * 3, False
    if mode == "caffe":
        return CAFFE_MEAN_BGR, (1.0,) * 3, True
    if mode == "torch":
        return tuple(255.0 * m for m in IMAGENET_MEAN), tuple(255.0 * s for s in IMAGENET_STD), False
    if mode == "cifar":
        return CIFAR_MEAN, CIFAR_STD, False
    raise ConfigError(f"preprocessing mode must be one of {', '.join(MODES)}, got {mode!r}")


def recorded_preprocessing(model: Any) -> str:
    """The preprocessing mode recorded with ``model``'s weights (``model.weights_meta``), else its
    ``default_cfg``'s."""
    meta = getattr(model, "weights_meta", None)
    return meta.preprocessing if meta is not None else model.default_cfg.preprocessing


def choose_preprocessing(model: Any, requested: str | None) -> tuple[str, str | None]:
    """The mode to use for ``model`` when the user asked for ``requested`` (None: the recorded one), and a
    one-line warning when the request differs from the recorded mode."""
    recorded = recorded_preprocessing(model)
    if requested is None or requested == recorded:
        return recorded, None
    if requested not in MODES:
        raise ConfigError(f"preprocessing mode must be one of {', '.join(MODES)}, got {requested!r}")
    meta = getattr(model, "weights_meta", None)
    where = f"with the weights ({meta.name})" if meta is not None else f"for {model.default_cfg.name}"
    return requested, (f"--preprocessing {requested} differs from the {recorded!r} preprocessing recorded {where}; "
                       f"using {requested!r}")


def _normalise(x: torch.Tensor, mode: str) -> torch.Tensor:
    """``mode``'s normalisation of float pixels whose channel axis is -3 ((3, H, W) or (N, 3, H, W))."""
    if mode == "tf":
        return x / 127.5 - 1.0
    mean, std, bgr = mode_stats(mode)
    if bgr:
        x = x.flip(-3)
    if mode == "torch":  # Keras scales to [0, 1] first: the same numbers, rounded as Keras rounds them
        x = x / 255.0
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    x = x - torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return x if mode == "caffe" else x / torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)


DATA_FORMATS = (None, "channels_first", "channels_last")


def preprocess_input(x: torch.Tensor | np.ndarray, data_format: str | None = None,
                     mode: str | None = None) -> torch.Tensor | np.ndarray:
    """Normalise RGB pixels in 0..255 as Keras' ``preprocess_input(x, data_format=None, mode='caffe')`` does
    (``keras.applications.imagenet_utils``), with Keras' arguments and defaults.

    ``mode``: ``'tf'`` (scale to [-1, 1]), ``'caffe'`` (Keras' default: RGB to BGR, subtract the ImageNet
    mean, no scaling), ``'torch'`` (scale to [0, 1], subtract the ImageNet mean and divide by its std), or the
    seed's ``'cifar'`` (the per-channel CIFAR-10 mean and std, in pixel units); convzoo's own
    ``preprocess_input(x, mode)`` is read as such. ``data_format``: where the channels are, for one image
    ((3, H, W) / (H, W, 3)) or a batch; None: channels-first for a tensor (torch's layout), channels-last for a
    numpy array (Keras' default). The result has the input's shape. Integer input (uint8 photos) is cast to
    float32 first, as Keras casts it; float input keeps its dtype. A tensor is never modified; a float numpy
    array is written over, as Keras does (pass a copy to keep it), and returned.
    """
    if mode is None and data_format in MODES:
        data_format, mode = None, data_format
    mode = "caffe" if mode is None else mode
    if mode not in MODES:
        raise ConfigError(f"preprocessing mode must be one of {', '.join(MODES)}, got {mode!r}")
    if data_format not in DATA_FORMATS:
        raise ConfigError(f"data_format must be 'channels_first' or 'channels_last', got {data_format!r}")
    if isinstance(x, np.ndarray):
        out = preprocess_input(torch.from_numpy(np.array(x, dtype=x.dtype.newbyteorder("="))),
                               data_format or "channels_last", mode).numpy()
        if np.issubdtype(x.dtype, np.floating) and x.flags.writeable:
            x[...] = out
            return x
        return out
    channels_last = data_format == "channels_last"
    if x.dim() not in (3, 4) or x.shape[-1 if channels_last else -3] != 3:
        layout = "(H, W, 3) or (N, H, W, 3)" if channels_last else "(3, H, W) or (N, 3, H, W)"
        raise ConfigError(f"expected RGB pixels of shape {layout}, got {tuple(x.shape)}")
    x = x if x.is_floating_point() else x.to(torch.float32)
    if channels_last:
        return _normalise(x.movedim(-1, -3), mode).movedim(-3, -1)
    return _normalise(x, mode)
