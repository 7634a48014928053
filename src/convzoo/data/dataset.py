"""The in-memory data set every convzoo data source produces."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DataError


@dataclass
class ArrayDataset:
    """Images as a uint8 tensor (N, C, H, W), labels as int64 (N,), and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

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
        return ArrayDataset(self.images[index], self.labels[index], self.classes)


def train_val_split(ds: ArrayDataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """A fixed, seeded split: the same ``seed`` always holds out the same samples."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n_val = max(1, round(len(ds) * val_fraction))
    if n_val >= len(ds):
        raise DataError(f"a data set of {len(ds)} images is too small to hold out {n_val} for validation")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    return ds.subset(perm[n_val:].sort().values), ds.subset(perm[:n_val].sort().values)
