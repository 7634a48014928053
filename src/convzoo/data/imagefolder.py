"""Your own images in the ImageFolder layout: one subfolder per class (classes sorted by name), images
anywhere below it, loaded into memory at one size."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, ImageError
from .dataset import ArrayDataset, check_size
from .imagenet import FileList, few
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
    return decode_images(root, files, found, size, lambda path: cover_pixels(path, size, resample, max_pixels),
                         range(len(found)))


def cover_pixels(path: Path, size: tuple[int, int], resample: str,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """The image at ``path`` scaled to cover ``size`` (H, W) and centre-cropped, as uint8 (3, H, W)."""
    image = resize_cover_crop(open_image(path, max_pixels), size, resample)
    return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())


def load_file_list(files: FileList, size: tuple[int, int],
                   pixels: Callable[[Path], torch.Tensor]) -> ArrayDataset:
    """The images of ``files`` decoded into memory by ``pixels`` (a path to uint8 (3, H, W) of ``size``:
    :func:`cover_pixels`, or ``ImageTransform.pixels`` for the weights' evaluation transform), with the
    labels and classes of ``files``. Unreadable files are skipped as in :func:`load_image_folder`; every
    class that has files must keep one."""
    items = [(files.path(i), int(files.labels[i])) for i in range(len(files))]
    return decode_images(files.root, items, files.classes, check_size(size), pixels, np.unique(files.labels))


def decode_images(root: Path, files: Sequence[tuple[Path, int]], classes: list[str], size: tuple[int, int],
                  pixels: Callable[[Path], torch.Tensor], required: Iterable[int]) -> ArrayDataset:
    """An :class:`ArrayDataset` of ``files`` (path, label) decoded by ``pixels``; files that raise
    :class:`ImageError` are listed as skipped, and logged once the set is known to be usable. Raises
    :class:`DataError` when a class of ``required`` (indices into ``classes``) keeps no image, with the reason
    its first file could not be read (and nothing logged)."""
    images = np.empty((len(files), 3, *size), np.uint8)
    labels: list[int] = []
    skipped: list[str] = []
    first_failure: dict[int, ImageError] = {}
    for path, label in files:
        try:
            images[len(labels)] = pixels(path).numpy()
        except ImageError as exc:
            skipped.append(str(exc))
            first_failure.setdefault(label, exc)
            continue
        labels.append(label)
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(classes))
    empty = [i for i in required if counts[i] == 0]
    if empty:
        reason = f" (e.g. {first_failure[empty[0]]})" if empty[0] in first_failure else ""
        raise DataError(f"{root}: expected at least one readable image per class, found none in "
                        f"{few([classes[i] for i in empty])}{reason}")
    for reason in skipped:
        log.warning("skipped %s", reason)
    return ArrayDataset(torch.from_numpy(images[:len(labels)]), torch.tensor(labels, dtype=torch.int64), classes,
                        skipped)
