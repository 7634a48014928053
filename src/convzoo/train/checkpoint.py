"""A run folder's checkpoints, each written so that a crash at any moment leaves a usable one.

A checkpoint is a folder (``last/``, ``best/``) holding ``model.safetensors`` (a convzoo checkpoint:
``convzoo.load_checkpoint`` rebuilds the model from it) and ``state.pt`` (optimizer, RNG, loader epoch,
history: what resuming needs). Both files are written into a temporary folder and fsynced, then the folder
replaces the old one by two renames; if a crash falls between them, the old folder (``.last.old``) is
still complete and is used.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
STATE_FORMAT = 1


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, fsync it, and rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def write_checkpoint(folder: Path, model: nn.Module, classes: list[str], extra: dict[str, Any],
                     model_args: dict[str, Any], state: dict[str, Any]) -> None:
    """Replace checkpoint ``folder`` (e.g. ``run/last``) with ``model``'s weights, as a convzoo checkpoint
    that ``load_checkpoint`` rebuilds from ``model_args``, and the run ``state``."""
    from ..weights import save_checkpoint

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_checkpoint(model, tmp / WEIGHTS_FILE, classes, extra, model_args)
    with open(tmp / STATE_FILE, "wb") as f:
        torch.save({"format": STATE_FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(folder: Path) -> Path | None:
    """The complete checkpoint folder for ``folder``: itself, or its predecessor if a crash interrupted the
    swap; None if there is none."""
    folder = Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    for candidate in (folder, old):
        if (candidate / WEIGHTS_FILE).is_file() and (candidate / STATE_FILE).is_file():
            return candidate
    return None


def read_state(folder: Path) -> dict[str, Any]:
    """The run state of checkpoint ``folder``."""
    path = Path(folder) / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read run state ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a convzoo run state (format {STATE_FORMAT})")
    return state


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of checkpoint ``folder``'s ``model.safetensors``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    try:
        return load_file(path)
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({e})") from None


def load_model_weights(model: nn.Module, folder: Path) -> None:
    """Load checkpoint ``folder``'s weights into ``model`` (every tensor, same shapes)."""
    tensors = read_weights(folder)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: does not fit the model "
                              f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from None
