"""``weights='imagenet'``: the published files of :mod:`.records`, cached in ``$CONVZOO_HOME/weights``
(default ``~/.cache/convzoo/weights``), downloaded with urllib when absent and checked against the hash
(and size, where known) their record gives; where no hash is known the file is used unchecked, with a warning.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from torch import nn

from ..errors import ChecksumError, DownloadError, WeightsError
from . import records
from .records import WeightRecord


def cache_dir() -> Path:
    """Where downloaded weights live: ``$CONVZOO_HOME/weights`` (``~/.cache/convzoo/weights`` by default)."""
    return Path(os.environ.get("CONVZOO_HOME") or "~/.cache/convzoo").expanduser() / "weights"


def select(name: str, spec: str = "imagenet", num_classes: int = 1000) -> WeightRecord:
    """The record ``spec`` (``'imagenet'`` or ``'imagenet:SOURCE'``) means for model ``name``: the first
    listed from that source, preferring a file without classifier when ``num_classes`` is not 1000."""
    _, _, source = spec.partition(":")
    table = records.RECORDS
    files = [f for f in table.get(name, ()) if not source or f.source == source]
    if not files:
        known = sorted({f.source for f in table.get(name, ())})
        hint = f"sources: {', '.join(known)}" if known else f"models with them: {', '.join(sorted(table))}"
        raise WeightsError(f"no published {spec!r} weights for {name} ({hint})")
    want_top = num_classes == 1000
    first = files[0]
    return next((f for f in files if f.include_top == want_top and f.source == first.source), first)


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str | None, name: str | None = None, size: int | None = None) -> None:
    """Raise :class:`ChecksumError` (naming the file ``name``, by default ``path``'s name) when ``path``'s
    size is not ``size`` (when given) or its digest does not start with ``expected`` (``'md5:HEX'`` or
    ``'sha256:HEX'``)."""
    if size is not None and path.stat().st_size != size:
        raise ChecksumError(f"{name or path.name}: {path.stat().st_size} bytes, expected {size} (truncated or "
                            "another file)")
    if expected is None:
        return
    algorithm, _, hexdigest = expected.partition(":")
    actual = _digest(path, algorithm)
    if not actual.startswith(hexdigest.lower()):
        raise ChecksumError(f"{name or path.name}: {algorithm} is {actual}, expected {hexdigest}")


def download(entry: WeightRecord, dest: Path) -> None:
    """Fetch ``entry.url`` into ``dest`` through a temporary file, verified before it takes ``dest``'s name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(entry.url, timeout=60) as response:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise DownloadError(f"could not download {entry.file_name} from {entry.url} ({reason}); "
                                    f"download it yourself and put it at {dest}") from None
            out.flush()
            os.fsync(out.fileno())
        try:
            verify(tmp, entry.hash, entry.file_name, entry.size)
        except ChecksumError as exc:
            raise ChecksumError(f"{exc} (downloaded from {entry.url}; removed)") from None
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(entry: WeightRecord) -> Path:
    """The cached file for ``entry``, downloaded first when absent; its hash is checked either way."""
    dest = cache_dir() / entry.file_name
    if dest.is_file():
        try:
            verify(dest, entry.hash, size=entry.size)
        except ChecksumError as exc:
            raise ChecksumError(f"{exc} (cached at {dest}; delete it to download again)") from None
    else:
        download(entry, dest)
    if entry.hash is None:
        warnings.warn(f"{entry.file_name}: no published hash; used unchecked", stacklevel=3)
    return dest


def fetch_pretrained(model: nn.Module, spec: str = "imagenet") -> tuple[WeightRecord, Path]:
    """The published file for ``model``'s architecture and its local path (see :func:`select`)."""
    cfg = getattr(model, "default_cfg", None)
    if cfg is None:
        raise WeightsError(f"{spec!r} weights need a model built by create_model (to know its architecture)")
    entry = select(cfg.name, spec, getattr(model, "num_classes", cfg.num_classes))
    return entry, fetch(entry)
