"""Fetching the official CIFAR archives from the University of Toronto, checked against their MD5."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError
from ..utils.fileio import download
from .cifar import CIFAR_MD5, check_archive

BASE_URL = "https://www.cs.toronto.edu/~kriz/"
ALIASES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


def short_name(name: str) -> str:
    """``name`` lower-cased without dashes and underscores: 'CIFAR-10' -> 'cifar10'."""
    return name.lower().replace("-", "").replace("_", "")


def archive_name(name: str) -> str:
    """The official archive file for ``name``: 'cifar10', 'cifar100' (python versions) or an archive's name."""
    name = ALIASES.get(short_name(name), name)
    if name not in CIFAR_MD5:
        raise ConfigError(f"expected one of {', '.join([*ALIASES, *CIFAR_MD5])}, got {name!r}")
    return name


def download_cifar(name: str, root: str | Path, url: str | None = None, *,
                   md5s: Mapping[str, str] | None = None) -> Path:
    """Download the official archive ``name`` (see :func:`archive_name`) into ``root`` and return its path.

    ``url`` defaults to the official one (:data:`BASE_URL` and the file name). The archive gets its name only
    once its MD5 (from ``md5s``, default :data:`CIFAR_MD5`) is right, so a failed download leaves nothing
    behind. A file already in place is checked, not fetched again. Raises :class:`DownloadError` or
    :class:`ChecksumError`.
    """
    file = archive_name(name)
    expected = (CIFAR_MD5 if md5s is None else md5s).get(file)
    if expected is None:
        raise ConfigError(f"expected an MD5 for {file} in md5s, found none")
    target = Path(root) / file
    if target.is_file():
        check_archive(target, expected)
        return target
    return download(url or BASE_URL + file, target, expected=f"md5:{expected}")
