"""Telling weight files apart by their first bytes, never by their names."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from ..errors import WeightsError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# HDF5 allows a user block before the superblock; the signature then sits at 512, 1024, 2048, ...
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)
CHECKPOINT_KEY = "convzoo"
CHECKPOINT_FILE = "model.safetensors"

KERAS_H5 = "keras-h5"
KERAS_ARCHIVE = "keras-archive"
TORCH = "torch"
SAFETENSORS = "safetensors"
CONVZOO = "convzoo-checkpoint"


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as f:
        for offset in _HDF5_OFFSETS:
            f.seek(offset)
            if f.read(8) == HDF5_SIGNATURE:
                return True
    return False


def safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file (``{}`` when it has none), or None if ``path`` is not one."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        n = int.from_bytes(head, "little")
        if not 2 <= n <= size - 8:
            return None
        raw = f.read(n)
    if not raw.startswith(b"{"):
        return None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def _zip_kind(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if "model.weights.h5" in names:
        return KERAS_ARCHIVE
    if any(n.endswith("data.pkl") for n in names):
        return TORCH
    return None


def checkpoint_file(folder: Path) -> Path:
    """The convzoo checkpoint inside ``folder``: ``model.safetensors``, else its only convzoo safetensors file."""
    preferred = folder / CHECKPOINT_FILE
    if preferred.is_file():
        return preferred
    found = sorted(p for p in folder.glob("*.safetensors")
                   if p.is_file() and CHECKPOINT_KEY in (safetensors_metadata(p) or {}))
    if len(found) == 1:
        return found[0]
    if not found:
        raise WeightsError(f"{folder}: folder holds no convzoo checkpoint (*.safetensors written by save_checkpoint)")
    raise WeightsError(f"{folder}: folder holds {len(found)} checkpoints ({', '.join(p.name for p in found)}); "
                       "name one")


def detect_format(path: str | Path) -> tuple[str, Path]:
    """The format of the weights at ``path`` and the file to read (a folder resolves to its checkpoint).

    Formats: ``keras-h5`` (any Keras HDF5 file), ``keras-archive`` (a ``.keras`` zip), ``torch`` (``torch.save``
    zip or legacy pickle), ``safetensors``, ``convzoo-checkpoint`` (safetensors written by ``save_checkpoint``).
    """
    path = Path(path)
    if path.is_dir():
        path = checkpoint_file(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise WeightsError(f"{path}: file is empty")
    if _is_hdf5(path):
        return KERAS_H5, path
    if head.startswith(b"PK\x03\x04"):
        kind = _zip_kind(path)
        if kind is None:
            raise WeightsError(f"{path}: a zip archive that is neither a torch.save file nor a .keras model "
                               "(truncated or unrelated)")
        return kind, path
    meta = safetensors_metadata(path)
    if meta is not None:
        return (CONVZOO if CHECKPOINT_KEY in meta else SAFETENSORS), path
    if head[0] == 0x80:
        return TORCH, path
    raise WeightsError(f"{path}: not a weights file convzoo knows (Keras HDF5, .keras, PyTorch .pth/.pt, "
                       f"safetensors or a convzoo checkpoint); it starts with {head!r}")
