"""How a photo becomes a model input: resize, centre crop and normalise, as recorded with the weights."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..preprocess import CUSTOM, MODES, Normalize, recorded_normalize
from ..models.spec import INTERPOLATIONS, ModelCfg
from .images import open_image, resize_cover_crop


@dataclass(frozen=True)
class ImageTransform:
    """How a photo becomes a model input: resize the shorter side to ``size / crop_pct``, centre-crop
    ``size``, then normalise with ``mode`` (Keras' modes, :mod:`convzoo.preprocess`), or with ``mode``
    ``'custom'``: (x - ``mean``) / ``std`` per RGB channel in 0..255 pixel units, a weights record's own."""

    size: tuple[int, int]
    crop_pct: float
    interpolation: str
    mode: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.mode not in (*MODES, CUSTOM):
            raise ConfigError(f"preprocessing mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == CUSTOM and (self.mean is None or self.std is None):
            raise ConfigError("preprocessing mode 'custom' needs the mean and std it normalises with")
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(f"crop_pct must lie in (0, 1], got {self.crop_pct}")

    @classmethod
    def from_cfg(cls, cfg: ModelCfg, mode: str | None = None) -> "ImageTransform":
        """The transform a model's ``default_cfg`` describes (``mode`` overrides its preprocessing)."""
        return cls(tuple(cfg.input_size[1:]), cfg.crop_pct, cfg.interpolation, mode or cfg.preprocessing)

    @classmethod
    def with_normalize(cls, size: tuple[int, int], crop_pct: float, interpolation: str,
                       normalize: Normalize) -> "ImageTransform":
        """The transform that resizes and crops as given and normalises with ``normalize`` (a mode, or RGB
        statistics; see :meth:`Normalize.record`)."""
        mode, mean, std = normalize.record()
        stats = (tuple(mean), tuple(std)) if mode == CUSTOM else (None, None)
        return cls(tuple(size), crop_pct, interpolation, mode, *stats)

    @classmethod
    def from_model(cls, model: Any, mode: str | None = None) -> "ImageTransform":
        """The transform for ``model``: its input size, and the interpolation, crop fraction and
        preprocessing recorded with its weights (``weights_meta``, else ``default_cfg``; a record's own mean
        and std for its ``'custom'`` preprocessing); ``mode`` overrides the preprocessing."""
        cfg = model.default_cfg
        meta = getattr(model, "weights_meta", None) or cfg
        normalize = Normalize(mode=mode) if mode else recorded_normalize(model)
        return cls.with_normalize(tuple(cfg.input_size[1:]), meta.crop_pct, meta.interpolation, normalize)

    @property
    def normalizer(self) -> Normalize:
        """The normalisation of this transform as a :class:`Normalize`."""
        return Normalize.from_record(self.mode, self.mean, self.std)

    def pixels(self, path: str | Path) -> torch.Tensor:
        """The image file at ``path`` resized and cropped, as a uint8 tensor (3, H, W)."""
        h, w = self.size
        # The small slack keeps a fraction like 299 / 342 from flooring to 341.
        outer = (math.floor(h / self.crop_pct + 1e-6), math.floor(w / self.crop_pct + 1e-6))
        im = resize_cover_crop(open_image(path), outer, self.interpolation)
        top, left = (outer[0] - h) // 2, (outer[1] - w) // 2
        im = im.crop((left, top, left + w, top + h))
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The float32 model input for RGB pixels in 0..255, shaped (N, 3, H, W): the preprocessing of the
        weights (Keras' ``preprocess_input`` for the mode, or the record's own mean and std)."""
        return self.normalizer(x)

    def __call__(self, paths: list[str | Path]) -> torch.Tensor:
        """A normalised float batch (N, 3, H, W) of the image files at ``paths``."""
        return self.normalize(torch.stack([self.pixels(p) for p in paths]).float())
