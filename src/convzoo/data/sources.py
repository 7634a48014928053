"""The one entry point to every data source: the embedded subset, CIFAR by name, folder or archive, and
image folders."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError, DataError
from .cifar import CIFAR_MD5, FORMATS, SPLITS, embedded_cifar10, find_cifar_folder, load_cifar
from .dataset import ArrayDataset, resize_dataset, train_val_split
from .download import download_cifar, short_name
from .imagefolder import load_image_folder

NAMES = {"cifar10": False, "cifar100": True}


def load_data(source: str | Path | None, *, split: str = "train", input_size: tuple[int, int] | None = None,
              download: bool = False, root: str | Path | None = None, resample: str = "bilinear",
              labels: str = "fine", md5s: Mapping[str, str] | None = None,
              verify_md5: bool = True) -> ArrayDataset:
    """Load ``split`` ('train' or 'test') of a data set into memory.

    ``source`` is None (the 5,085 CIFAR-10 training images embedded in convzoo), 'cifar10' or 'cifar100'
    (looked up in ``root``, default ``~/.cache/convzoo/data``, as an official folder or archive, and
    downloaded there if ``download``), a CIFAR folder or official archive of either format (an archive path
    that does not exist yet is downloaded if ``download``), or an image folder with one subfolder per class.
    An image folder is the split itself, so ``split`` does not apply to it, and it needs ``input_size``.

    Images are scaled to cover ``input_size`` (H, W) and centre-cropped ('bilinear' or 'bicubic'); None
    keeps CIFAR's 32x32. ``labels`` picks CIFAR-100's 'fine' or 'coarse' classes; ``md5s`` and
    ``verify_md5`` are passed to :func:`load_cifar`.
    """
    return _load(source, split, input_size, download, root, resample, labels, md5s, verify_md5, None)


def load_train_val(source: str | Path | None, *, val_source: str | Path | None = None, val_fraction: float = 0.1,
                   seed: int = 0, input_size: tuple[int, int] | None = None, download: bool = False,
                   root: str | Path | None = None, resample: str = "bilinear", labels: str = "fine",
                   md5s: Mapping[str, str] | None = None,
                   verify_md5: bool = True) -> tuple[ArrayDataset, ArrayDataset]:
    """The training split of ``source`` (see :func:`load_data`) and a validation set: the test split of
    ``val_source`` (an image folder, a CIFAR folder or archive), whose classes must match, or, without
    ``val_source``, a fraction ``val_fraction`` held out by :func:`train_val_split` with ``seed``."""
    args = (input_size, download, root, resample, labels, md5s, verify_md5)
    train = _load(source, "train", *args, None)
    if val_source is None:
        return train_val_split(train, val_fraction, seed)
    val = _load(val_source, "test", *args, train.classes)
    if val.classes != train.classes:
        raise DataError(f"{val_source}: expected the classes of the training set ({', '.join(train.classes)}), "
                        f"found {', '.join(val.classes)}")
    return train, val


def _load(source: str | Path | None, split: str, input_size: tuple[int, int] | None, download: bool,
          root: str | Path | None, resample: str, labels: str, md5s: Mapping[str, str] | None,
          verify_md5: bool, classes: list[str] | None) -> ArrayDataset:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if source is None:
        if split != "train":
            raise DataError(f"the embedded CIFAR-10 subset holds training images only: expected split "
                            f"'train', found {split!r}")
        return _sized(embedded_cifar10(), input_size, resample)
    path = Path(source)
    if not path.exists():
        path = _fetch(str(source), path, download, root, md5s)
    if path.is_dir() and not any(path.iterdir()):
        raise DataError(f"{path}: expected CIFAR files or one subfolder per class, found an empty folder")
    if path.is_file() or find_cifar_folder(path):
        return _sized(load_cifar(path, split, labels=labels, md5s=md5s, verify_md5=verify_md5), input_size,
                      resample)
    if input_size is None:
        raise ConfigError(f"{path} is an image folder: expected an input_size (H, W) to load it at, found None")
    return load_image_folder(path, input_size, resample=resample, classes=classes)


def _fetch(source: str, path: Path, download: bool, root: str | Path | None,
           md5s: Mapping[str, str] | None) -> Path:
    """The local CIFAR folder or archive for a name or a missing archive path, downloaded if allowed."""
    if short_name(source) in NAMES:
        root = Path(root) if root is not None else Path.home() / ".cache" / "convzoo" / "data"
        formats = [f for f in FORMATS if f.cifar100 == NAMES[short_name(source)]]
        for fmt in formats:
            if (root / fmt.folder).is_dir():
                return root / fmt.folder
            if (root / fmt.archive).is_file():
                return root / fmt.archive
        if download:
            return download_cifar(source, root, md5s=md5s)
        raise DataError(f"expected {source} in {root} ({', '.join(f.archive for f in formats)} or its folder), "
                        f"found none: pass download=True or put {formats[0].archive} there")
    if path.name in CIFAR_MD5 and download:
        return download_cifar(path.name, path.parent, md5s=md5s)
    raise DataError(f"expected a CIFAR folder or archive or an image folder at {path}, found nothing")


def _sized(ds: ArrayDataset, input_size: tuple[int, int] | None, resample: str) -> ArrayDataset:
    return ds if input_size is None else resize_dataset(ds, input_size, resample)
