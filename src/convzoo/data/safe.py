"""Reading untrusted data files safely: a restricted unpickler, and tar archives read in memory after every
member has been checked."""

from __future__ import annotations

import io
import logging
import pickle
import tarfile
import zlib
from collections.abc import Collection
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import DataError, UnsafeFileError

log = logging.getLogger(__name__)

# The only globals a CIFAR pickle refers to: how numpy rebuilds an array and its dtype (old and new
# module paths; ``_frombuffer`` is what pickle protocol 5 uses), and how Python 3 writes bytes with pickle
# protocol 2 (``_codecs.encode(text, 'latin1')``, which the unpickler restricts to that encoding).
ALLOWED_GLOBALS = frozenset({
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as pickle protocol 2 uses it for bytes: ``text`` in Latin-1, no other encoding."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafeFileError(f"expected bytes stored as _codecs.encode(text, 'latin1'), found the encoding "
                              f"{str(encoding)[:40]!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds dicts, lists, strings, bytes, numbers and numpy arrays, and refuses every
    other global, so a crafted pickle cannot call anything."""

    def find_class(self, module: str, name: str) -> object:
        """Resolve ``module.name`` only if it is one of :data:`ALLOWED_GLOBALS`."""
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeFileError(f"expected a pickle of numpy arrays, lists and strings, "
                                  f"found a reference to {module}.{name}")
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        return super().find_class(module, name)


def safe_unpickle(data: bytes, source: str) -> object:
    """Unpickle ``data`` (read from ``source``, named in errors) with :class:`RestrictedUnpickler`, decoding
    Python 2 strings to bytes as the official CIFAR loader does."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{source}: {exc}") from None
    except Exception as exc:  # a damaged pickle raises whatever the opcode it stops at raises
        log.debug("unpickling %s: %r", source, exc)
        raise DataError(f"{source}: expected a pickle, found unreadable data (truncated, damaged or not a "
                        f"pickle)") from None


def check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Raise :class:`UnsafeFileError` for a member that could write outside the folder it is extracted to:
    an absolute path, a ``..`` component, a link leading outside, or a device or FIFO."""
    where = f"{archive}: expected members inside the archive's folder, found"
    if _is_absolute(member.name):
        raise UnsafeFileError(f"{where} the absolute path {member.name!r}")
    if ".." in PurePosixPath(member.name).parts or ".." in PureWindowsPath(member.name).parts:
        raise UnsafeFileError(f"{where} {member.name!r} with a '..' component")
    if member.isdev():
        raise UnsafeFileError(f"{where} the device or FIFO {member.name!r}")
    if member.issym() or member.islnk():
        # A symbolic link is resolved from its own folder, a hard link from the archive's root.
        target = PurePosixPath(member.name).parent / member.linkname if member.issym() else member.linkname
        if _is_absolute(member.linkname) or _escapes(PurePosixPath(target)):
            raise UnsafeFileError(f"{where} the link {member.name!r} -> {member.linkname!r} leading outside")


def _is_absolute(name: str) -> bool:
    windows = PureWindowsPath(name)
    return bool(windows.drive or windows.root)


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            return True
    return False


def read_tar_members(archive: Path, wanted: Collection[str]) -> dict[str, bytes]:
    """Check every member of ``archive`` with :func:`check_member`, and return the contents of the regular
    files whose base name is in ``wanted``, keyed by that base name. Nothing is written to disk. An archive
    that cannot be read is one :class:`DataError` line (tarfile's explanation goes to the debug log)."""
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        log.debug("tarfile.open(%s): %s", archive, exc)
        raise DataError(f"{archive}: {_not_an_archive(archive, exc)}") from None
    found: dict[str, bytes] = {}
    try:
        with tar:
            for member in tar:
                check_member(member, archive)
                base = PurePosixPath(member.name).name
                if base not in wanted:
                    continue
                if not member.isfile():
                    raise UnsafeFileError(f"{archive}: expected {member.name!r} to be a regular file, found a "
                                          f"link or folder")
                if base in found:
                    raise DataError(f"{archive}: expected one member named {base!r}, found several")
                found[base] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        log.debug("reading %s: %s", archive, exc)
        raise DataError(f"{archive}: expected a tar or tar.gz archive, found a truncated or damaged one") from None
    return found


def _not_an_archive(archive: Path, exc: BaseException) -> str:
    """Why ``archive`` could not be opened as a tar archive, in a few words."""
    if isinstance(exc, PermissionError):
        return "not readable (permission denied)"
    if archive.is_dir():
        return "expected a tar or tar.gz archive, found a folder"
    if isinstance(exc, OSError) and exc.errno is not None:  # the OS's refusal, not a decompressor's
        return f"cannot read it ({exc.strerror})"
    found = "an empty file" if archive.stat().st_size == 0 else "a file that is not one"
    return f"expected a tar or tar.gz archive, found {found}"
