"""Calibration images for int8 quantization: image files the user names, read as the model takes them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, ImageError
from ..runtime import CALIBRATION_IMAGES
from .images import IMAGE_EXTENSIONS
from .transforms import ImageTransform

log = logging.getLogger(__name__)

def find_calibration_files(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files in ``sources``: each folder searched recursively for files with an image extension
    (hidden files and folders left out), each file taken as it is; in sorted order per source.

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
        else:
            raise DataError(f"expected a calibration image file or folder at {source}, found nothing")
    if not files:
        raise DataError(f"expected calibration images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in "
                        f"{', '.join(map(str, sources)) or 'no source'}, found none")
    return files


def calibration_images(model: Any, sources: str | Path | Sequence[str | Path], limit: int = CALIBRATION_IMAGES,
                       batch_size: int = 8) -> list[torch.Tensor]:
    """Up to ``limit`` images of ``sources`` (see :func:`find_calibration_files`; evenly spaced over the
    sorted files when there are more) read as ``model`` takes them
    (:meth:`ImageTransform.from_model`: its input size, crop, interpolation and preprocessing), as float32
    batches (N, 3, H, W) of at most ``batch_size``.

    Unreadable files are skipped with a warning in the log; raises :class:`DataError` when none is readable.
    """
    files = find_calibration_files(sources)
    if len(files) > limit:
        files = [files[i * len(files) // limit] for i in range(limit)]
    transform = ImageTransform.from_model(model)
    images, skipped = [], []
    for path in files:
        try:
            images.append(transform([path]))
        except ImageError as exc:
            log.warning("calibration: skipped %s", exc)
            skipped.append(str(exc))
    if not images:
        raise DataError(f"expected readable calibration images, found {len(files)} file(s), none readable "
                        f"(first: {skipped[0]})")
    return list(torch.cat(images).split(batch_size))
