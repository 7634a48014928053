"""Reading untrusted data files safely: a restricted unpickler, and tar archives read in memory after every
member has been checked."""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Collection
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import DataError, UnsafeFileError

# The only globals a CIFAR pickle refers to: how numpy rebuilds an array and its dtype (old and new
# module paths; ``_frombuffer`` is what pickle protocol 5 uses).
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds dicts, lists, strings, bytes, numbers and numpy arrays, and refuses every
    other global, so a crafted pickle cannot call anything."""

    def find_class(self, module: str, name: str) -> object:
        """Resolve ``module.name`` only if it is one of :data:`ALLOWED_GLOBALS`."""
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeFileError(f"expected a pickle of numpy arrays, lists and strings, "
                                  f"found a reference to {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(data: bytes, source: str) -> object:
    """Unpickle ``data`` (read from ``source``, named in errors) with :class:`RestrictedUnpickler`, decoding
    Python 2 strings to bytes as the official CIFAR loader does."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{source}: {exc}") from None
    except Exception as exc:
        raise DataError(f"{source}: expected a pickle, found unreadable data "
                        f"({type(exc).__name__}: {exc})") from None


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
    files whose base name is in ``wanted``, keyed by that base name. Nothing is written to disk."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
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
        raise DataError(f"{archive}: expected a readable tar or tar.gz archive, found a broken one "
                        f"({type(exc).__name__}: {exc})") from None
    return found
