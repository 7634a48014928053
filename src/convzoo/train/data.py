"""The data of a run: which source, which validation set, at which size, and how it is normalised.

A :class:`DataSpec` is written into the run's ``config.json`` so that ``convzoo eval`` can rebuild the exact
validation split later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data import ArrayDataset, load_data, load_train_val


@dataclass(frozen=True)
class DataSpec:
    """``source``: None (the embedded CIFAR-10 subset), a CIFAR name, folder or archive, or an image folder.
    ``val_source``: a separate validation set (its test split), else ``val_fraction`` of the training
    data is held out with ``split_seed``. Images are loaded at ``input_size`` (H, W) with ``resample``."""

    source: str | None
    val_source: str | None
    val_fraction: float
    split_seed: int
    input_size: tuple[int, int]
    resample: str = "bilinear"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly values."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        """The spec recorded by :meth:`as_dict`."""
        return cls(**{**d, "input_size": tuple(d["input_size"])})

    def describe(self) -> str:
        """A short human-readable name of the data."""
        name = self.source or "embedded CIFAR-10 subset"
        val = self.val_source or f"{self.val_fraction:g} held out (seed {self.split_seed})"
        return f"{name}, validation: {val}"


def absolute_source(source: str | Path | None) -> str | None:
    """An existing path made absolute (so a run can be evaluated from another folder); names stay as given."""
    if source is None:
        return None
    path = Path(source)
    return str(path.resolve()) if path.exists() else str(source)


def resample_for(interpolation: str) -> str:
    """The resize filter for a model's ``interpolation`` ('bicubic' or 'bilinear')."""
    return "bicubic" if interpolation == "bicubic" else "bilinear"


def load_run_data(spec: DataSpec) -> tuple[ArrayDataset, ArrayDataset]:
    """The training and validation sets of ``spec``."""
    return load_train_val(spec.source, val_source=spec.val_source, val_fraction=spec.val_fraction,
                          seed=spec.split_seed, input_size=spec.input_size, resample=spec.resample)


def load_eval_data(source: str | Path, input_size: tuple[int, int], resample: str) -> ArrayDataset:
    """The test split of a CIFAR source (an image folder is used whole), at ``input_size``."""
    return load_data(source, split="test", input_size=input_size, resample=resample)


def to_bgr(ds: ArrayDataset) -> ArrayDataset:
    """``ds`` with its colour channels reversed."""
    return ArrayDataset(ds.images.flip(1), ds.labels, ds.classes, ds.skipped)
