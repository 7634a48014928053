"""The in-memory data set every convzoo data source produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError

RESAMPLE = ("bilinear", "bicubic")
# The largest image side convzoo takes (a training or evaluation size, summary, graph, bench, export): far
# beyond any classification input, small enough that one feature map of the widest stem fits in memory.
MAX_SIDE = 4096


@dataclass
class ArrayDataset:
    """Images as a uint8 tensor (N, C, H, W), labels as int64 (N,), and the class names.

    ``skipped`` lists the source files that could not be read and were left out, each as 'path: reason'.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be a uint8 tensor (N, C, H, W), got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"expected {self.images.shape[0]} labels, found {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> "ArrayDataset":
        """The samples at ``index``, in that order."""
        return ArrayDataset(self.images[index], self.labels[index], self.classes, self.skipped)


class Splittable(Protocol):
    """A data set that can be split: its length, and the samples at given indices."""

    def __len__(self) -> int: ...

    def subset(self, index: torch.Tensor) -> Any: ...


S = TypeVar("S", bound=Splittable)


def train_val_split(ds: S, val_fraction: float = 0.1, seed: int = 0) -> tuple[S, S]:
    """A fixed, seeded split of an :class:`ArrayDataset` or a ``FileList``: the same ``seed`` always holds out
    the same samples (a ``torch.randperm`` of the indices; both parts keep the original order)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n_val = max(1, round(len(ds) * val_fraction))
    if n_val >= len(ds):
        raise DataError(f"a data set of {len(ds)} images is too small to hold out {n_val} for validation")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    return ds.subset(perm[n_val:].sort().values), ds.subset(perm[:n_val].sort().values)


def cover_crop_box(height: int, width: int, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Scale an image of ``height`` x ``width`` so that it covers ``size`` (H, W), keeping its aspect ratio
    (the shorter side, relative to ``size``, fits exactly): the scaled (H, W) and the centred crop box
    (left, top, right, bottom) of ``size`` within it."""
    out_h, out_w = size
    scale = max(out_h / height, out_w / width)
    new_h, new_w = max(out_h, round(height * scale)), max(out_w, round(width * scale))
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return (new_h, new_w), (left, top, left + out_w, top + out_h)


def resize_dataset(ds: ArrayDataset, size: tuple[int, int], resample: str = "bilinear") -> ArrayDataset:
    """``ds`` with every image scaled to cover ``size`` (H, W) and centre-cropped to it (antialiased when
    shrinking); ``resample`` is 'bilinear' or 'bicubic'. Returns ``ds`` itself if the size already matches."""
    size = check_size(size)
    if resample not in RESAMPLE:
        raise ConfigError(f"resample must be one of {', '.join(RESAMPLE)}, got {resample!r}")
    n, c, h, w = ds.images.shape
    if (h, w) == size:
        return ds
    (new_h, new_w), (left, top, right, bottom) = cover_crop_box(h, w, size)
    chunk = max(1, (1 << 26) // (c * new_h * new_w))  # about 256 MiB of float32 per step
    out = torch.empty((n, c, *size), dtype=torch.uint8)
    for start in range(0, n, chunk):
        x = F.interpolate(ds.images[start:start + chunk].float(), size=(new_h, new_w), mode=resample,
                          align_corners=False, antialias=True)
        out[start:start + chunk] = x[:, :, top:bottom, left:right].round().clamp(0, 255).to(torch.uint8)
    return ArrayDataset(out, ds.labels, ds.classes, ds.skipped)


def check_size(size: object) -> tuple[int, int]:
    """``size`` as a (H, W) tuple of positive ints, or :class:`ConfigError`."""
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ConfigError(f"input size must be two positive integers (H, W), got {size!r}")
    return int(size[0]), int(size[1])
