"""Calibration images for int8 quantization: image files the user names, read as the model takes them."""

from __future__ import annotations

import glob
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConvzooWarning, DataError, ImageError
from ..runtime import CALIBRATION_IMAGES
from .images import IMAGE_EXTENSIONS
from .transforms import ImageTransform


def find_calibration_files(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files in ``sources``: each folder searched recursively for files with an image extension
    (hidden files and folders left out), each file taken as it is, each glob pattern (``calib/*.jpg``,
    ``photos/**/*.png``; one that names no existing path) expanded to the files it matches with an image
    extension; in sorted order per source.

    Raises :class:`DataError` for a source that does not exist, or when no image file is found.
    """
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            files += sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(source).parts))
        elif source.is_file():
            files.append(source)
        elif glob.has_magic(str(source)):
            files += sorted(Path(p) for p in glob.glob(str(source), recursive=True)
                            if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTENSIONS)
        else:
            raise DataError(f"expected a calibration image file or folder at {source}, found nothing")
    if not files:
        raise DataError(f"expected calibration images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in "
                        f"{', '.join(map(str, sources)) or 'no source'}, found none")
    return files


def spread(n: int, limit: int) -> list[int]:
    """``min(n, limit)`` indices evenly spaced over ``range(n)``, the first included: the images to calibrate
    on from ``n`` sorted ones (so that every class of a class-sorted folder is among them)."""
    return list(range(n)) if n <= limit else [i * n // limit for i in range(limit)]


def read_calibration(files: Sequence[Path], inputs: Callable[[list[Path]], torch.Tensor],
                     batch_size: int = 8) -> list[torch.Tensor]:
    """``files`` read by ``inputs`` (image files to a normalised float32 batch (N, 3, H, W)), as batches of at
    most ``batch_size``. Unreadable files are skipped with one :class:`ConvzooWarning` line (how many, the
    first named); raises :class:`DataError` when none is readable."""
    images, skipped = [], []
    for path in files:
        try:
            images.append(inputs([path]))
        except ImageError as exc:
            skipped.append(str(exc))
    if not images:
        raise DataError(f"expected readable calibration images, found {len(files)} file(s), none readable "
                        f"(first: {skipped[0]})")
    if skipped:
        warnings.warn(f"calibration: skipped {len(skipped)} unreadable of {len(files)} files (first: {skipped[0]})",
                      ConvzooWarning, stacklevel=2)
    return list(torch.cat(images).split(batch_size))


def calibration_images(model: Any, sources: str | Path | Sequence[str | Path], limit: int = CALIBRATION_IMAGES,
                       batch_size: int = 8, *, transform: Callable[[list[Path]], torch.Tensor] | None = None
                       ) -> list[torch.Tensor]:
    """Up to ``limit`` images of ``sources`` (see :func:`find_calibration_files`; evenly spaced over the
    sorted files when there are more) read as ``model`` takes them, as float32 batches (N, 3, H, W) of at
    most ``batch_size``: by ``transform`` (image files to a normalised batch; ``convzoo eval`` passes a
    run's own) or :meth:`ImageTransform.from_model` (its input size, crop, interpolation and preprocessing).

    Unreadable files are skipped with a ConvzooWarning; raises :class:`DataError` when none is readable.
    """
    files = find_calibration_files(sources)
    files = [files[i] for i in spread(len(files), limit)]
    return read_calibration(files, transform or ImageTransform.from_model(model), batch_size)
