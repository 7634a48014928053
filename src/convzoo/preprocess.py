"""Preprocessing as Keras names it: ``'tf'``, ``'caffe'``, ``'torch'``, plus the seed's ``'cifar'``; and
:class:`Normalize`, the one record of how a model's input is normalised (a mode, or explicit statistics).

The functions take RGB pixels in 0..255 (:func:`preprocess_input` says which shapes and types). Which mode a
model takes is recorded with its weights (``model.weights_meta``, a :class:`~convzoo.models.spec.WeightRecord`); a model
without a record takes its ``default_cfg``'s (:func:`recorded_normalize`). A training run records one
:class:`Normalize` (:meth:`Normalize.to_json` in its ``config.json``, and as its checkpoints' weight record),
which every verb reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Normalize:
    """How RGB pixels in 0-255 become the model input: a preprocessing ``mode`` (Keras' ``preprocess_input``,
    bit for bit as ``predict`` applies it), or, with ``mode`` None, per-channel ``mean`` and ``std`` in pixel
    units in the model's channel order, BGR when ``bgr`` (``(x - mean) / std``). Raises :class:`ConfigError`
    for an unknown mode, or statistics that are not three positive-std values."""

    mode: str | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    bgr: bool = False
    # mean and std as (1, C, 1, 1) tensors by (device, dtype), made once rather than copied at every batch.
    _stats: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ConfigError(f"preprocessing mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode is None and (len(self.mean) != 3 or len(self.std) != 3 or
                                  not all(math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0):
            raise ConfigError(f"expected a mean and a positive std for each of 3 channels, got mean {list(self.mean)} "
                              f"std {list(self.std)}")

    @classmethod
    def stats(cls, mean: tuple[float, ...], std: tuple[float, ...], bgr: bool) -> "Normalize":
        """Normalisation by per-channel statistics (pixel units, the model's channel order)."""
        return cls(None, tuple(float(m) for m in mean), tuple(float(s) for s in std), bool(bgr))

    @classmethod
    def matching(cls, mean: tuple[float, ...], std: tuple[float, ...], bgr: bool = False) -> "Normalize":
        """The mode whose normalisation these statistics are (pixel units, the model's channel order; equal
        to 1e-4 pixel and 1e-6 relative), else the statistics themselves."""
        for mode in MODES:
            m, s, b = mode_stats(mode)
            if b == bgr and len(mean) == len(std) == 3 and all(
                    math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-4) for x, y in zip(m, mean)) and all(
                    math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6) for x, y in zip(s, std)):
                return cls(mode=mode)
        return cls.stats(mean, std, bgr)

    @classmethod
    def from_record(cls, preprocessing: str, mean: tuple[float, ...] | None = None,
                    std: tuple[float, ...] | None = None) -> "Normalize":
        """The normalisation a weight record states: its ``preprocessing`` mode, or for ``'custom'`` its own
        RGB ``mean`` and ``std`` (pixel units)."""
        if preprocessing == CUSTOM:
            if mean is None or std is None:
                raise ConfigError("preprocessing mode 'custom' needs the mean and std it normalises with")
            return cls.stats(mean, std, False)
        return cls(mode=preprocessing)

    def record(self) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
        """As a weight record states it: (mode, its mean, its std) in the model's channel order, or
        (``'custom'``, mean, std) for RGB statistics no mode has. :class:`ConfigError` for BGR statistics
        that no mode has (a record's own statistics are RGB)."""
        if self.mode is not None:
            return (self.mode, *mode_stats(self.mode)[:2])
        if self.bgr:
            raise ConfigError(f"{self.describe()} cannot be recorded with weights: a record's own statistics are RGB")
        return CUSTOM, self.mean, self.std

    def pixel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
        """(mean, std, BGR) in pixel units, the model's channel order, whatever the form."""
        return mode_stats(self.mode) if self.mode is not None else (self.mean, self.std, self.bgr)

    def to_json(self) -> str | dict[str, Any]:
        """The mode's name, or ``{"mean": [...], "std": [...], "bgr": false}`` (pixel units, the model's channel
        order) for statistics no mode has: what a run's ``config.json`` records."""
        if self.mode is not None:
            return self.mode
        return dict(mean=list(self.mean), std=list(self.std), bgr=self.bgr)

    @classmethod
    def from_json(cls, value: Any, where: str) -> "Normalize":
        """The normalisation :meth:`to_json` wrote (statistics equal to a mode's are read as that mode);
        :class:`ConfigError` naming ``where`` for anything else."""
        if isinstance(value, str):
            return cls(mode=value)
        try:
            return cls.matching(tuple(float(v) for v in value["mean"]), tuple(float(v) for v in value["std"]),
                                bool(value.get("bgr", False)))
        except (TypeError, KeyError, ValueError, AttributeError):
            raise ConfigError(f"{where}: expected a preprocessing mode ({', '.join(MODES)}) or mean, std and bgr, "
                              f"got {value!r}") from None

    def describe(self) -> str:
        """``'caffe'``, or ``mean [...] std [...]`` (with ``BGR``): for messages."""
        if self.mode is not None:
            return repr(self.mode)
        numbers = f"mean {[round(v, 4) for v in self.mean]} std {[round(v, 4) for v in self.std]}"
        return numbers + (" BGR" if self.bgr else "")

    def fill(self) -> tuple[int, ...]:
        """The mean colour as RGB pixels: what uncovered areas of an augmented image are filled with."""
        mean, _, bgr = self.pixel_stats()
        return tuple(int(round(m)) for m in (mean[::-1] if bgr else mean))

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float32 model inputs of RGB pixels (3, H, W) or (N, 3, H, W), any dtype, values 0-255."""
        x = pixels.float()
        single = x.dim() == 3
        x = x[None] if single else x
        if self.mode is not None:
            x = preprocess_input(x, self.mode)
        else:
            key = (x.device, x.dtype)
            if key not in self._stats:
                self._stats[key] = tuple(torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
                                         for v in (self.mean, self.std))
            mean, std = self._stats[key]
            x = ((x.flip(1) if self.bgr else x) - mean) / std
        return x[0] if single else x


def recorded_normalize(model: Any) -> Normalize:
    """The normalisation recorded with ``model``'s weights (``model.weights_meta``: its mode, or its own
    statistics), else its ``default_cfg``'s mode."""
    meta = getattr(model, "weights_meta", None)
    if meta is None:
        return Normalize(mode=model.default_cfg.preprocessing)
    return Normalize.from_record(meta.preprocessing, meta.mean, meta.std)


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
