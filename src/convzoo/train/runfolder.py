"""The files of a run folder: ``config.json``, the ``best/`` and ``last/`` checkpoints, ``metrics.csv``,
TensorBoard's event file and ``curves.png``; each written so that a crash at any moment leaves a usable one.

A checkpoint is a folder (``last/``, ``best/``) holding ``model.safetensors`` (a convzoo checkpoint:
``convzoo.load_checkpoint`` rebuilds the model from it) and ``state.pt`` (optimizer, RNG, loader epoch,
history: what resuming needs). Both files are written into a temporary folder, then the folder replaces the
old one by two renames; if a crash falls between them, the old folder (``.last.old``) is still complete and
is used. A write that fails (a full disk, a read-only folder) is one :class:`OutputError` line naming the
checkpoint or file, and leaves the last complete checkpoint as it was.

A run folder has one writer: the process holding the exclusive ``flock`` on its ``run.lock``
(:class:`RunLock`), from the start of the run to its end. The kernel releases the lock when that process
dies, so a killed run can always be resumed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError, ConfigError, OutputError, WeightsError
from ..utils.fileio import atomic_write, complete_folder, ensure_dir, fsync_dir, previous_version, read_text
from ..utils.typed import coerce
from ..weights import load_torch_file, save_checkpoint
from .data import DataSpec
from .metrics import write_history
from .plots import plot_curves
from .recipes import from_dict

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
LOCK_FILE = "run.lock"
# How long acquiring a lock waits for the loader processes of a killed holder to exit (they check for
# their parent every few seconds).
ORPHAN_WAIT_S = 15.0
STATE_FORMAT = 1
# What every reader of a run takes from its config.json and from a checkpoint's state.pt.
CONFIG_FIELDS: dict[str, Any] = {"model": str, "recipe": dict, "data": dict, "classes": list[str], "params": int}
STATE_FIELDS: dict[str, Any] = {"epoch": int, "optimizer": dict, "rng": torch.Tensor, "history": list, "best": dict,
                                "wall_time": float, "loader": dict, "cuda_rng": list}
# curves.png is redrawn at most this often (and after the last epoch): drawing takes ~0.3 s, as long as
# a whole epoch of the fast recipe on a GPU.
PLOT_EVERY_S = 30.0
# TensorBoard tag -> metrics.csv column; the step is the epoch number.
TENSORBOARD_TAGS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_acc",
                    "accuracy/val": "val_acc", "accuracy/val_top5": "val_top5", "lr": "lr",
                    "throughput/img_per_s": "img_per_s"}


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run folder: a JSON object whose :data:`CONFIG_FIELDS` have their types, with a
    recipe that :func:`~.recipes.from_dict` takes and data that :meth:`DataSpec.from_dict` takes; else
    :class:`CheckpointError` naming the folder or the file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"expected a run folder at {run_dir}, found a file" if run_dir.exists()
                              else f"no run folder at {run_dir}")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a convzoo run folder (no {CONFIG_FILE})")
    try:
        config = json.loads(read_text(path, "a run's config.json", CheckpointError))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: expected JSON, found an error at line {e.lineno}, column {e.colno} "
                              f"({e.msg})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found a {type(config).__name__}")
    _check_fields(config, CONFIG_FIELDS, path, "run config")
    try:
        from_dict(config["recipe"])
        DataSpec.from_dict(config["data"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return config


def _check_fields(record: dict[str, Any], fields: dict[str, Any], path: Path, what: str) -> None:
    """:class:`CheckpointError` naming ``path`` unless ``record`` (a convzoo ``what`` read from it) holds each
    of ``fields`` (name -> type) with a value of that type."""
    missing = [key for key in fields if key not in record]
    if missing:
        raise CheckpointError(f"{path}: expected a convzoo {what}, found one without {', '.join(missing)}")
    try:
        for key, hint in fields.items():
            coerce(record[key], hint, f"field {key}")
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def os_reason(exc: BaseException) -> str:
    """The operating system's reason for a failed write: the ``strerror`` of an ``OSError``, or of the one an
    :class:`OutputError` replaced (its ``__context__``)."""
    cause = exc if isinstance(exc, OSError) else exc.__context__
    if isinstance(cause, OSError):
        return cause.strerror or type(cause).__name__
    return str(exc)


def write_checkpoint(folder: Path, model: nn.Module, classes: list[str], extra: dict[str, Any],
                     model_args: dict[str, Any], state: dict[str, Any]) -> None:
    """Replace checkpoint ``folder`` (e.g. ``run/last``) with ``model``'s weights, as a convzoo checkpoint
    that ``load_checkpoint`` rebuilds from ``model_args``, and the run ``state``. Raises
    :class:`OutputError` naming ``folder`` (never the temporary one) when it cannot be written; the old
    checkpoint is then left as it was."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = previous_version(folder)
    try:
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
    except (OSError, OutputError) as exc:
        raise OutputError(f"cannot write checkpoint {folder}: {os_reason(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(folder: Path) -> Path | None:
    """The complete checkpoint folder for ``folder``: itself, or its predecessor if a crash interrupted the
    swap; None if there is none."""
    return complete_folder(folder, (WEIGHTS_FILE, STATE_FILE))


def position(state: dict[str, Any]) -> tuple[int, int]:
    """How far the run of a checkpoint's ``state`` had come: (epochs finished, batches of the next one)."""
    partial = state.get("partial")
    return state["epoch"], partial["step"] if partial else 0


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint of ``run_dir`` (``last/``, or ``best/`` when a failed write left ``last/``
    behind or without one) that is furthest into the run; None if there is none."""
    found = [c for c in (find_checkpoint(Path(run_dir) / name) for name in ("last", "best")) if c is not None]
    return max(found, key=lambda c: position(read_state(c)), default=None)


def read_state(folder: Path) -> dict[str, Any]:
    """The run state of checkpoint ``folder`` (its ``state.pt``, read with :func:`~convzoo.weights.load_torch_file`:
    a pickle that would run code is refused with :class:`UnsafeFileError`); :class:`CheckpointError` naming
    the file when it cannot be read or is not a convzoo run state."""
    path = Path(folder) / STATE_FILE
    try:
        state = load_torch_file(path)
    except WeightsError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a convzoo run state (format {STATE_FORMAT})")
    _check_fields(state, STATE_FIELDS, path, "run state")
    if not {"state", "param_groups"} <= state["optimizer"].keys():
        keys = ", ".join(map(str, state["optimizer"]))[:60]
        raise CheckpointError(f"{path}: expected an optimizer state with state and param_groups, found "
                              f"{f'one with {keys}' if keys else 'an empty one'}")
    return state


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of checkpoint ``folder``'s ``model.safetensors``."""
    path = Path(folder) / WEIGHTS_FILE
    try:
        return load_file(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read weights ({os_reason(e)})") from None
    except SafetensorError as e:
        log.debug("safetensors(%s): %s", path, e)
        found = "an empty file" if path.stat().st_size == 0 else "a truncated or damaged one"
        raise CheckpointError(f"{path}: expected a safetensors file, found {found}") from None


def load_model_weights(model: nn.Module, folder: Path) -> None:
    """Load checkpoint ``folder``'s weights into ``model`` (every tensor, same shapes); :class:`CheckpointError`
    naming the file and how it differs from the model (which the run's ``config.json`` describes)."""
    tensors = read_weights(folder)
    own = model.state_dict()
    differences = {
        "missing": [k for k in own if k not in tensors],
        "unexpected": [k for k in tensors if k not in own],
        "of another shape": [k for k in own if k in tensors and tensors[k].shape != own[k].shape],
    }
    if any(differences.values()):
        cfg = getattr(model, "default_cfg", None)
        name = cfg.name if cfg is not None else type(model).__name__
        found = ", ".join(f"{len(keys)} tensors {what} ({keys[0]}{', ...' if len(keys) > 1 else ''})"
                          for what, keys in differences.items() if keys)
        raise CheckpointError(f"{Path(folder) / WEIGHTS_FILE}: expected the weights of {name}, as the run's "
                              f"{CONFIG_FILE} describes it, found {found}")
    model.load_state_dict(tensors, strict=True)


class RunWriter:
    """Rank 0's writer of a run folder's per-epoch files: the ``best/`` and ``last/`` checkpoints,
    ``metrics.csv``, the TensorBoard scalars (step: the epoch) and ``curves.png`` (redrawn at most every
    :data:`PLOT_EVERY_S` seconds, and after the last epoch). A context manager: leaving it closes the
    TensorBoard file. Every write that fails raises :class:`OutputError` naming the file or folder."""

    def __init__(self, folder: Path, classes: list[str], model_args: dict[str, Any], title: str,
                 start_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.classes, self.model_args, self.title = Path(folder), classes, model_args, title
        self.hook = threading.excepthook
        threading.excepthook = self._quiet_event_thread
        try:
            # A resumed run drops the scalars its interrupted session wrote after its last checkpoint.
            self.scalars = self._events(SummaryWriter, log_dir=str(folder),
                                        purge_step=start_epoch + 1 if start_epoch else None)
        except OutputError:
            threading.excepthook = self.hook
            raise
        self.plotted = -math.inf

    def record(self, model: nn.Module, extra: dict[str, Any], state: dict[str, Any], improved: bool,
               final: bool) -> None:
        """Write the files of the epoch just finished (``state['epoch']``, its row the last of
        ``state['history']``); ``improved``: it is the best so far; ``final``: it is the run's last."""
        # best before last: a crash between the two leaves last one epoch behind, and resuming from it
        # recomputes the same epoch and rewrites best identically.
        if improved:
            write_checkpoint(self.folder / "best", model, self.classes, extra, self.model_args, state)
        self.checkpoint(model, extra, state)
        history = state["history"]
        write_history(self.folder / METRICS_FILE, history)
        for tag, key in TENSORBOARD_TAGS.items():
            self._events(self.scalars.add_scalar, tag, history[-1][key], state["epoch"])
        self._events(self.scalars.flush)
        if final or time.perf_counter() - self.plotted >= PLOT_EVERY_S:
            plot_curves(history, self.folder / CURVES_FILE, self.title)
            self.plotted = time.perf_counter()

    def checkpoint(self, model: nn.Module, extra: dict[str, Any], state: dict[str, Any]) -> None:
        """Replace ``last/`` with ``model`` and ``state`` (at an epoch's end, or inside an epoch)."""
        write_checkpoint(self.folder / "last", model, self.classes, extra, self.model_args, state)

    def _events(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call`` of TensorBoard's writer, an OSError as one :class:`OutputError` line."""
        try:
            return call(*args, **kwargs)
        except OSError as exc:
            raise OutputError(f"cannot write the TensorBoard events in {self.folder}: {os_reason(exc)}") from None

    def _quiet_event_thread(self, args: Any) -> None:
        """Leave out the traceback of TensorBoard's writing thread when a write fails: the same error is raised
        again by the next flush, as one line."""
        if not (args.thread is not None and type(args.thread).__name__ == "_AsyncWriterThread"
                and isinstance(args.exc_value, OSError)):
            self.hook(args)

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            self._events(self.scalars.close)
        except OutputError:
            if exc_type is None:
                raise
        finally:
            threading.excepthook = self.hook


class RunLock:
    """The exclusive ``flock`` on a run folder's ``run.lock``, which holds the pid of its holder.

    :meth:`acquire` takes it or raises :class:`OutputError` naming the folder and the holding pid. The lock
    belongs to the open file, so loader processes forked while it is held share it; should the holder be
    killed, they exit within seconds and :meth:`acquire` waits for that."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder, self.fd = folder, fd

    @classmethod
    def acquire(cls, folder: str | Path, purpose: str) -> "RunLock":
        """Take the lock of ``folder`` (which must exist). ``purpose`` ends the refusal: what to do instead."""
        folder = Path(folder)
        path = folder / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {os_reason(exc)}") from None
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while not _try_lock(fd):
            pid = _holder_pid(fd)
            if pid is not None and _alive(pid) or time.monotonic() > deadline:
                os.close(fd)
                raise OutputError(f"{folder} is in use by another convzoo train (pid {pid or 'unknown'}); {purpose}")
            time.sleep(0.2)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise OutputError(f"cannot write {path}: {os_reason(exc)}") from None
        return cls(folder, fd)

    def release(self) -> None:
        """Give the folder up (also for loader processes that share the open file)."""
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.release()


def lock_holder(folder: Path) -> int | None:
    """The pid holding ``folder``'s lock (0 when it cannot be read), or None when no live process holds it."""
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if _try_lock(fd, fcntl.LOCK_SH):
            return None
        pid = _holder_pid(fd)
        return 0 if pid is None else pid if _alive(pid) else None
    finally:
        os.close(fd)


def _try_lock(fd: int, kind: int = fcntl.LOCK_EX) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
