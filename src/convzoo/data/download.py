"""Fetching the official CIFAR archives from the University of Toronto, checked against their MD5."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from ..errors import ChecksumError, ConfigError, DownloadError
from .cifar import CIFAR_MD5
from .safe import check_md5

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
                   md5s: Mapping[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Download the official archive ``name`` (see :func:`archive_name`) into ``root`` and return its path.

    ``url`` defaults to the official one. The file is written to a temporary file in ``root`` and renamed
    only once its MD5 (from ``md5s``, default :data:`CIFAR_MD5`) is right, so a failed download leaves
    nothing behind. A file already in place is checked, not fetched again.
    """
    file = archive_name(name)
    expected = (CIFAR_MD5 if md5s is None else md5s).get(file)
    if expected is None:
        raise ConfigError(f"expected an MD5 for {file} in md5s, found none")
    expected = expected.lower()
    root = Path(root)
    target = root / file
    if target.is_file():
        check_md5(target, expected)
        return target
    url = url or BASE_URL + file
    root.mkdir(parents=True, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=f".{file}.", suffix=".part", dir=root)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise DownloadError(f"could not download {file} from {url} ({exc}); download it by hand and "
                                    f"put it at {target}") from None
        if digest.hexdigest() != expected:
            raise ChecksumError(f"{url}: expected MD5 {expected}, found {digest.hexdigest()} (a corrupt or "
                                f"changed download; nothing was saved to {target})")
        os.replace(part, target)
    finally:
        Path(part).unlink(missing_ok=True)
    return target
