"""Counting what a model gets right: losses, top-1/top-5 and the confusion matrix, and the per-epoch
history written to ``metrics.csv``."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..runtime import autocast
from ..utils.fileio import atomic_write_text, read_text

COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "img_per_s", "seconds",
           "wall_time", "skipped")
# Columns that runs recorded before they existed lack; such a row counts them as 0.
NEW_COLUMNS = {"skipped": 0}


@dataclass
class Tally:
    """Sums over evaluated images: cross-entropy, top-5 hits and the confusion matrix (rows: true class)."""

    loss_sum: float
    top5: int
    confusion: torch.Tensor

    @property
    def n(self) -> int:
        """Images counted."""
        return int(self.confusion.sum())

    @property
    def loss(self) -> float:
        """Mean cross-entropy."""
        return self.loss_sum / max(self.n, 1)

    @property
    def top1_acc(self) -> float:
        """Fraction of images whose top class is right."""
        return float(self.confusion.diagonal().sum()) / max(self.n, 1)

    @property
    def top5_acc(self) -> float:
        """Fraction of images whose class is among the five top-scored."""
        return self.top5 / max(self.n, 1)

    def per_class(self) -> list[float]:
        """Top-1 accuracy of each class (NaN for a class with no image)."""
        totals = self.confusion.sum(1).double()
        return (self.confusion.diagonal().double() / totals).tolist()


def logits_of(output: Any) -> torch.Tensor:
    """The main logits of a model output (Inception V3 in training mode returns (logits, aux))."""
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
             bf16: bool = False) -> Tally:
    """Run ``model`` in inference mode over ``batches`` of (images, labels) and tally the results.

    The sums stay on the batches' device until the end, so a GPU never waits for the host in between.
    """
    was_training = model.training
    model.eval()

    def logits() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in batches:
            with autocast(x.device, bf16):
                out = logits_of(model(x))
            yield out, y

    try:
        return tally_logits(logits(), num_classes)
    finally:
        model.train(was_training)


def tally_logits(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> Tally:
    """The :class:`Tally` of ``batches`` of (logits (N, classes), labels (N,)); the labels are moved to the
    logits' device, where the sums stay until the end."""
    sums: torch.Tensor | None = None
    for logits, y in batches:
        logits, y = logits.float(), y.to(logits.device)
        hits5 = (logits.topk(min(5, num_classes), 1).indices == y[:, None]).any(1).sum()
        cells = torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes ** 2)
        batch = torch.cat([F.cross_entropy(logits, y, reduction="sum").double()[None], hits5.double()[None],
                           cells.double()])
        sums = batch if sums is None else sums + batch
    if sums is None:
        return Tally(0.0, 0, torch.zeros(num_classes, num_classes, dtype=torch.int64))
    sums = sums.cpu()
    return Tally(float(sums[0]), int(sums[1]), sums[2:].round().long().view(num_classes, num_classes))


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """Write the per-epoch rows to ``metrics.csv`` (atomically, the whole file each time)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row[k] if k in row else NEW_COLUMNS[k]) for k in COLUMNS})
    atomic_write_text(path, buf.getvalue())


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.csv``, as numbers (``epoch`` and ``skipped`` as integers). Raises
    :class:`CheckpointError` naming the file when it is not UTF-8 text, lacks a column of :data:`COLUMNS`, or
    holds a value that is not a number."""
    reader = csv.DictReader(io.StringIO(read_text(path, "a run's metrics.csv", CheckpointError), newline=""))
    missing = [c for c in COLUMNS if c not in NEW_COLUMNS and c not in (reader.fieldnames or ())]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{path}: expected a header naming the columns of metrics.csv, found one without "
                              f"{', '.join(missing[:3])}{more}")
    return [{key: _number(value, key, path, reader.line_num) for key, value in row.items()} for row in reader]


def _number(text: Any, column: str | None, path: Path, line: int) -> float:
    """One cell of ``metrics.csv`` as a number; :class:`CheckpointError` naming where it is otherwise."""
    if column is None or text is None:
        raise CheckpointError(f"{path}: expected as many values as columns on line {line}, found "
                              f"{'more' if column is None else 'fewer'}")
    try:
        return int(text) if column in ("epoch", "skipped") else float(text)
    except ValueError:
        shown = text if len(text) <= 20 else text[:17] + "..."
        raise CheckpointError(f"{path}: expected a number in column {column} on line {line}, "
                              f"found {shown!r}") from None


def _fmt(v: Any) -> str:
    return str(v) if isinstance(v, int) else f"{v:.6g}"
