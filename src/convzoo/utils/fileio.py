"""Files in and out: atomic writes that follow the umask, file digests, and downloads checked against a hash.

An atomic write goes to a new file beside the target (created with mode 0666 minus the umask, as ``open``
would), is flushed and fsynced, then renamed over the target, and the folder entry is fsynced: a crash at any
moment leaves the old file or the new one, never a mix. Any ``OSError`` while writing (a full disk, a
read-only folder, a path through a file) becomes one :class:`~convzoo.errors.OutputError` line that names
the user's path, never the temporary one.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ..errors import ChecksumError, ConvzooError, DataError, DownloadError, OutputError

Writer = Callable[[BinaryIO], None]
HASH_ALGORITHMS = ("md5", "sha256")


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def ensure_dir(path: str | Path) -> Path:
    """Create folder ``path`` (and its parents) if needed; :class:`OutputError` when it cannot be one."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot create folder {path}: a file of that name exists") from None
    except OSError as exc:
        raise OutputError(f"cannot create folder {path}: {_reason(exc)}") from None
    return path


def fsync_dir(path: str | Path) -> None:
    """Make the entries of folder ``path`` (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def previous_version(folder: str | Path) -> Path:
    """Where a folder replaced by two renames (``folder`` to this, then the new one to ``folder``) keeps its
    previous version until the new one is in place: ``.NAME.old`` beside it."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.old")


def complete_folder(folder: str | Path, required: Collection[str]) -> Path | None:
    """``folder`` when it holds every file named in ``required``, else its :func:`previous_version` when that
    does (a crash between the two renames leaves only it), else None."""
    for candidate in (Path(folder), previous_version(folder)):
        if all((candidate / name).is_file() for name in required):
            return candidate
    return None


def atomic_write(path: str | Path, data: bytes | Writer) -> Path:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` atomically (see the
    module docstring); the parent folder is created. Returns ``path``. Raises :class:`OutputError`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, text.encode())


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (no NaN or infinity) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_text(path: str | Path, what: str, error: type[ConvzooError] = DataError) -> str:
    """The UTF-8 text of the file at ``path``, which should hold ``what`` (e.g. ``'a run's metrics.csv'``).
    Raises ``error`` naming ``path`` for a missing file, a folder, an unreadable file or binary data."""
    path = Path(path)
    if not path.is_file():
        raise error(f"expected {what} at {path}, found {'a folder' if path.is_dir() else 'nothing'}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: expected {what}, found binary data (not UTF-8 text)") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({_reason(exc)})") from None


def read_names(path: str | Path, what: str = "names") -> list[str]:
    """The non-empty lines of the UTF-8 text file at ``path``, stripped: one name per line (class names).
    Raises :class:`DataError` naming ``path`` for a missing, unreadable, binary or empty file."""
    text = read_text(path, f"a text file of {what} (one per line)")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path}: expected {what}, one per line, found none")
    return names


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of the file at ``path`` ('md5' or 'sha256')."""
    if algorithm not in HASH_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(HASH_ALGORITHMS)}, got {algorithm!r}")
    h = hashlib.new(algorithm, usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_file(path: str | Path, expected: str | None, size: int | None = None, name: str | None = None) -> None:
    """Raise :class:`ChecksumError` (naming ``name``, by default the file's name) when the file's size is not
    ``size`` (when given) or its digest does not start with ``expected`` (``'md5:HEX'`` or ``'sha256:HEX'``;
    None checks nothing)."""
    path = Path(path)
    name = name or path.name
    found_size = path.stat().st_size
    if size is not None and found_size != size:
        raise ChecksumError(f"{name}: expected {size} bytes, found {found_size} (truncated or another file)")
    if expected is None:
        return
    algorithm, _, hexdigest = expected.partition(":")
    actual = file_digest(path, algorithm)
    if not actual.startswith(hexdigest.lower()):
        raise ChecksumError(f"{name}: expected {algorithm} {hexdigest.lower()}, found {actual}")


def download(url: str, dest: str | Path, expected: str | None = None, size: int | None = None,
             progress: bool = False) -> Path:
    """Fetch ``url`` into ``dest`` with ``torch.hub.download_url_to_file`` (into a temporary file beside it),
    and give it ``dest``'s name only after :func:`check_file` passed; a failure leaves nothing at ``dest``.
    Raises :class:`DownloadError` or :class:`ChecksumError`."""
    from torch.hub import download_url_to_file

    dest = Path(dest)
    ensure_dir(dest.parent)
    part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        try:
            download_url_to_file(url, str(part), progress=progress)
        except Exception as exc:  # urllib raises URLError, HTTPError, socket and SSL errors, ValueError
            reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or exc
            raise DownloadError(f"could not download {url} ({reason}); download it yourself and put it at "
                                f"{dest}") from None
        try:
            check_file(part, expected, size, name=dest.name)
        except ChecksumError as exc:
            raise ChecksumError(f"{exc} (downloaded from {url}; not kept)") from None
        try:
            os.replace(part, dest)
        except OSError as exc:
            raise OutputError(f"cannot write {dest}: {_reason(exc)}") from None
    finally:
        part.unlink(missing_ok=True)
    return dest
