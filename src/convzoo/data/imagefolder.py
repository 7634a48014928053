"""Your own images in the ImageFolder layout: one subfolder per class (classes sorted by name), images
anywhere below it, loaded into memory at one size."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, ImageError
from .dataset import ArrayDataset, check_size
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, open_image, resize_cover_crop

log = logging.getLogger(__name__)


def find_images(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class names (sorted subfolder names of ``root``) and every image file below them with its class
    index, in sorted order. Hidden files and folders and files without an image extension are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"expected an image folder at {root}, found {'a file' if root.exists() else 'nothing'}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: expected one subfolder per class, found none")
    files = [(path, index) for index, name in enumerate(classes)
             for path in sorted((root / name).rglob("*"))
             if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
             and not any(part.startswith(".") for part in path.relative_to(root).parts)]
    if not files:
        raise DataError(f"{root}: expected image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the class "
                        f"subfolders {', '.join(classes)}, found none")
    return classes, files


def load_image_folder(root: str | Path, size: tuple[int, int], *, resample: str = "bilinear",
                      classes: list[str] | None = None,
                      max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ArrayDataset:
    """Every image below ``root`` opened with :func:`open_image`, scaled to cover ``size`` (H, W) and
    centre-cropped to it.

    Files that cannot be read are skipped, logged with one warning line each and listed in the result's
    ``skipped``. With ``classes`` given (a training set's), the folder must hold exactly those classes.
    Every class must keep at least one image.
    """
    size = check_size(size)
    found, files = find_images(root)
    if classes is not None and found != list(classes):
        raise DataError(f"{root}: expected the classes of the training set ({', '.join(classes)}), "
                        f"found {', '.join(found)}")
    images = np.empty((len(files), 3, *size), np.uint8)
    labels, skipped = [], []
    for path, label in files:
        try:
            image = resize_cover_crop(open_image(path, max_pixels), size, resample)
            images[len(labels)] = np.asarray(image).transpose(2, 0, 1)
        except ImageError as exc:
            log.warning("skipped %s", exc)
            skipped.append(str(exc))
            continue
        labels.append(label)
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(found))
    if (counts == 0).any():
        empty = [found[i] for i in np.flatnonzero(counts == 0)]
        raise DataError(f"{root}: expected at least one readable image per class, found none in "
                        f"{', '.join(empty)}")
    return ArrayDataset(torch.from_numpy(images[:len(labels)]), torch.tensor(labels, dtype=torch.int64), found,
                        skipped)
