"""PNG figures of runs: loss and accuracy curves, a confusion matrix, and several runs overlaid.

Figures are drawn with matplotlib's object API on the Agg canvas, so no display and no global pyplot
state are involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..utils.fileio import atomic_write


# Confusion matrices of up to this many classes are drawn whole.
ALL_CLASSES_UP_TO = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Any, path: Path) -> None:
    atomic_write(Path(path), lambda f: fig.savefig(f, format="png"))


def plot_curves(history: Sequence[dict[str, float]], path: Path, title: str = "") -> None:
    """Train and validation loss (left) and accuracy (right) per epoch."""
    fig = _figure(10, 4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    for ax, key, label in ((loss_ax, "loss", "loss"), (acc_ax, "acc", "top-1 accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], marker=".", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], marker=".", label="validation")
        _epoch_axis(ax)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_confusion(confusion: torch.Tensor, classes: Sequence[str], path: Path, title: str = "") -> None:
    """The confusion matrix (rows: true class, columns: prediction) as fractions of each true class. Of more
    than :data:`ALL_CLASSES_UP_TO` classes (ImageNet's 1,000, a subset evaluated), only those with images or
    predictions are drawn."""
    if len(classes) > ALL_CLASSES_UP_TO:
        keep = ((confusion.sum(0) + confusion.sum(1)) > 0).nonzero().flatten()
        confusion, classes = confusion[keep][:, keep], [classes[i] for i in keep.tolist()]
        title = f"{title} ({len(classes)} classes with images or predictions)" if title else title
    n = len(classes)
    side = min(max(5.0, 0.45 * n + 2), 30.0)
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    totals = confusion.sum(1, keepdim=True).clamp(min=1)
    frac = (confusion.double() / totals).numpy()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if n <= 30:
        ticks = list(range(n))
        ax.set_xticks(ticks, list(classes), rotation=90)
        ax.set_yticks(ticks, list(classes))
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    _save(fig, path)


def plot_compare(runs: Sequence[tuple[str, Sequence[dict[str, float]]]], path: Path) -> None:
    """Validation loss and accuracy of several runs, one line each, labelled by run."""
    fig = _figure(11, 4.5)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for label, history in runs:
        epochs = [r["epoch"] for r in history]
        line, = loss_ax.plot(epochs, [r["val_loss"] for r in history], label=label)
        loss_ax.plot(epochs, [r["train_loss"] for r in history], color=line.get_color(), linestyle=":", alpha=0.7)
        acc_ax.plot(epochs, [r["val_acc"] for r in history], color=line.get_color(), label=label)
    loss_ax.set_ylabel("loss (solid: validation, dotted: train)")
    acc_ax.set_ylabel("validation top-1 accuracy")
    for ax in (loss_ax, acc_ax):
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    _save(fig, path)
