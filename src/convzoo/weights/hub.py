"""``weights='imagenet'``: the published files the families record, cached in ``$CONVZOO_HOME/weights``
(default ``~/.cache/convzoo/weights``), downloaded when absent (:func:`convzoo.utils.fileio.download`) and
checked against the hash (and size, where known) their record gives; where no hash is known the file is used
unchecked, with a warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from torch import nn

from .. import registry
from ..errors import ChecksumError, WeightsError
from ..models.spec import WeightRecord
from ..utils.fileio import check_file, download


def cache_dir() -> Path:
    """Where downloaded weights live: ``$CONVZOO_HOME/weights`` (``~/.cache/convzoo/weights`` by default)."""
    return Path(os.environ.get("CONVZOO_HOME") or "~/.cache/convzoo").expanduser() / "weights"


def select(name: str, spec: str = "imagenet", num_classes: int = 1000) -> WeightRecord:
    """The record ``spec`` (``'imagenet'`` or ``'imagenet:SOURCE'``) means for model ``name``: the first
    listed from that source, preferring a file without classifier when ``num_classes`` is not 1000."""
    _, _, source = spec.partition(":")
    listed = registry.list_records(name)
    files = [f for f in listed if not source or f.source == source]
    if not files:
        known = sorted({f.source for f in listed})
        hint = f"sources: {', '.join(known)}" if known else f"models with them: {', '.join(sorted(registry.RECORDS))}"
        raise WeightsError(f"no published {spec!r} weights for {name} ({hint})")
    want_top = num_classes == 1000
    first = files[0]
    return next((f for f in files if f.include_top == want_top and f.source == first.source), first)


def fetch(entry: WeightRecord) -> Path:
    """The cached file for ``entry``, downloaded first when absent; its hash is checked either way.
    Raises :class:`ChecksumError` or :class:`~convzoo.errors.DownloadError`."""
    dest = cache_dir() / entry.file_name
    if dest.is_file():
        try:
            check_file(dest, entry.hash, entry.size)
        except ChecksumError as exc:
            raise ChecksumError(f"{exc} (cached at {dest}; delete it to download again)") from None
    else:
        download(entry.url, dest, entry.hash, entry.size)
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
