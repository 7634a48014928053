"""The files of a run folder: ``config.json``, the ``best/`` and ``last/`` checkpoints, ``metrics.csv``,
TensorBoard's event file and ``curves.png``; each written so that a crash at any moment leaves a usable one.

A checkpoint is a folder (``last/``, ``best/``) holding ``model.safetensors`` (a convzoo checkpoint:
``convzoo.load_checkpoint`` rebuilds the model from it) and ``state.pt`` (optimizer, RNG, loader epoch,
history: what resuming needs). Both files are written into a temporary folder, then the folder replaces the
old one by two renames; if a crash falls between them, the old folder (``.last.old``) is still complete and
is used.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError
from ..utils.fileio import atomic_write, ensure_dir, fsync_dir
from ..weights import save_checkpoint
from .metrics import write_history
from .plots import plot_curves

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
STATE_FORMAT = 1
# curves.png is redrawn at most this often (and after the last epoch): drawing takes ~0.3 s, as long as
# a whole epoch of the fast recipe on a GPU.
PLOT_EVERY_S = 30.0
# TensorBoard tag -> metrics.csv column; the step is the epoch number.
TENSORBOARD_TAGS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_acc",
                    "accuracy/val": "val_acc", "accuracy/val_top5": "val_top5", "lr": "lr",
                    "throughput/img_per_s": "img_per_s"}


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run folder, or :class:`CheckpointError`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no run folder at {run_dir}")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a convzoo run folder (no {CONFIG_FILE})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def write_checkpoint(folder: Path, model: nn.Module, classes: list[str], extra: dict[str, Any],
                     model_args: dict[str, Any], state: dict[str, Any]) -> None:
    """Replace checkpoint ``folder`` (e.g. ``run/last``) with ``model``'s weights, as a convzoo checkpoint
    that ``load_checkpoint`` rebuilds from ``model_args``, and the run ``state``."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    ensure_dir(tmp)
    save_checkpoint(model, tmp / WEIGHTS_FILE, classes, extra, model_args)
    # The atomic write fsyncs the folder too, making both files' entries durable.
    atomic_write(tmp / STATE_FILE, lambda f: torch.save({"format": STATE_FORMAT, **state}, f))
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


class RunWriter:
    """Rank 0's writer of a run folder's per-epoch files: the ``best/`` and ``last/`` checkpoints,
    ``metrics.csv``, the TensorBoard scalars (step: the epoch) and ``curves.png`` (redrawn at most every
    :data:`PLOT_EVERY_S` seconds, and after the last epoch). A context manager: leaving it closes the
    TensorBoard file."""

    def __init__(self, folder: Path, classes: list[str], model_args: dict[str, Any], title: str,
                 start_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.classes, self.model_args, self.title = Path(folder), classes, model_args, title
        # A resumed run drops the scalars its interrupted session wrote after its last checkpoint.
        self.scalars = SummaryWriter(log_dir=str(folder), purge_step=start_epoch + 1 if start_epoch else None)
        self.plotted = -math.inf

    def record(self, model: nn.Module, extra: dict[str, Any], state: dict[str, Any], improved: bool,
               final: bool) -> None:
        """Write the files of the epoch just finished (``state['epoch']``, its row the last of
        ``state['history']``); ``improved``: it is the best so far; ``final``: it is the run's last."""
        # best before last: a crash between the two leaves last one epoch behind, and resuming from it
        # recomputes the same epoch and rewrites best identically.
        if improved:
            write_checkpoint(self.folder / "best", model, self.classes, extra, self.model_args, state)
        write_checkpoint(self.folder / "last", model, self.classes, extra, self.model_args, state)
        history = state["history"]
        write_history(self.folder / METRICS_FILE, history)
        for tag, key in TENSORBOARD_TAGS.items():
            self.scalars.add_scalar(tag, history[-1][key], state["epoch"])
        self.scalars.flush()
        if final or time.perf_counter() - self.plotted >= PLOT_EVERY_S:
            plot_curves(history, self.folder / CURVES_FILE, self.title)
            self.plotted = time.perf_counter()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.scalars.close()
