"""int8 calibration images from a run's own training data, for ``predict`` and ``eval`` of a run's checkpoint
without ``--calibration``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..data import train_val_split
from ..data.calibration import read_calibration, spread
from ..data.dataset import resize_dataset
from ..data.transforms import ImageTransform
from ..errors import ConfigError
from ..runtime import CALIBRATION_IMAGES
from .data import DataSpec, load_run_data, resample_for, scan_source, source_kind
from .runfolder import CONFIG_FILE, WEIGHTS_FILE, read_config

Normalizer = Callable[[torch.Tensor], torch.Tensor]


def run_data(checkpoint: str | Path) -> DataSpec | None:
    """The data recorded by the run a checkpoint belongs to (a run's ``best/`` or ``last/`` folder, or a file
    in one), or None for a checkpoint outside any run. Raises :class:`CheckpointError` for a run whose
    ``config.json`` cannot be read."""
    path = Path(checkpoint).resolve()
    folder = path if path.is_dir() else path.parent
    if not ((folder.parent / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()):
        return None
    return DataSpec.from_dict(read_config(folder.parent)["data"])


def run_calibration(spec: DataSpec, transform: ImageTransform, normalize: Normalizer,
                    limit: int = CALIBRATION_IMAGES, batch_size: int = 32) -> list[torch.Tensor]:
    """Up to ``limit`` images of the training split of a run's data ``spec`` (its ``config.json``'s, see
    :func:`run_data`), evenly spaced over it, as float32 batches (N, 3, H, W) of the model's inputs: resized and
    cropped by ``transform`` (CIFAR arrays: scaled to cover its size), then ``normalize`` (float pixels
    0-255 (N, 3, H, W) to inputs). The embedded subset and CIFAR are read into memory (a few seconds); an
    image folder is listed and only the chosen files are decoded.

    Raises :class:`ConfigError` for a run trained on tar shards (no cheap way to spread over them: name
    calibration images instead) and :class:`DataError` when the data cannot be read.
    """
    kind = source_kind(spec.source, spec.labels)
    if kind == "shards":
        raise ConfigError(f"the run trained on tar shards ({spec.source}), which int8 is not calibrated on: name a "
                          f"few hundred calibration images with --calibration DIR|GLOB")
    if kind in ("embedded", "cifar"):
        train = load_run_data(spec)[0]
        picked = train.subset(torch.tensor(spread(len(train), limit)))
        picked = resize_dataset(picked, transform.size, resample_for(transform.interpolation))
        return [normalize(x.float()) for x in picked.images.split(batch_size)]
    files = scan_source(spec.source, spec.labels)
    if spec.val_source is None:
        files = train_val_split(files, spec.val_fraction, spec.split_seed)[0]
    return read_calibration([files.path(i) for i in spread(len(files), limit)],
                            lambda paths: normalize(torch.stack([transform.pixels(p) for p in paths]).float()),
                            batch_size)
