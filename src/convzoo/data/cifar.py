"""CIFAR-10 in its official binary format (``data_batch_N.bin``: 3,073-byte records, a label byte then
the R, G and B planes of a 32x32 image), and the subset embedded in the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .dataset import ArrayDataset

RECORD = 1 + 3 * 32 * 32
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_cifar_binary(files: list[Path], classes: list[str] | None = None) -> ArrayDataset:
    """Read CIFAR-10 binary batch files into one :class:`ArrayDataset`."""
    images, labels = [], []
    classes = classes or CIFAR10_CLASSES
    for f in files:
        raw = Path(f).read_bytes()
        if len(raw) == 0 or len(raw) % RECORD:
            raise DataError(f"{f}: expected a multiple of {RECORD} bytes (CIFAR-10 binary records), "
                            f"found {len(raw)} bytes")
        rec = np.frombuffer(raw, np.uint8).reshape(-1, RECORD)
        if rec[:, 0].max() >= len(classes):
            raise DataError(f"{f}: labels must be below {len(classes)}, found {int(rec[:, 0].max())}")
        labels.append(rec[:, 0].astype(np.int64))
        images.append(rec[:, 1:].reshape(-1, 3, 32, 32))
    return ArrayDataset(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                        list(classes))


def embedded_cifar10() -> ArrayDataset:
    """The 5,085 real CIFAR-10 training images shipped with convzoo (the first 1,017 of each batch)."""
    root = resources.files("convzoo") / "resources" / "cifar10-subset"
    meta = (root / "batches.meta.txt").read_text().split()
    with resources.as_file(root) as path:
        return read_cifar_binary([path / f"data_batch_{i}.bin" for i in range(1, 6)], meta)
