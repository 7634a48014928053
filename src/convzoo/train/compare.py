"""``convzoo compare``: a markdown table of runs and one figure overlaying their curves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..utils.tables import markdown_table
from .extras import require
from .metrics import read_history
from .plots import plot_compare
from .runfolder import METRICS_FILE, read_config

HEADER = ("run", "model", "parameters", "best val acc", "final val acc", "epochs", "wall time")


@dataclass
class RunSummary:
    """One row of the comparison."""

    run: str
    model: str
    params: int
    best_val_acc: float | None
    final_val_acc: float | None
    epochs: int
    wall_time: float
    history: list[dict[str, float]]


def summarize(run_dir: str | Path) -> RunSummary:
    """The model, size and results of the run in ``run_dir`` (from config.json and metrics.csv)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    metrics = run_dir / METRICS_FILE
    history = read_history(metrics) if metrics.is_file() else []
    accs = [r["val_acc"] for r in history]
    return RunSummary(run_dir.name, config["model"], config["params"], max(accs) if accs else None,
                      accs[-1] if accs else None, int(history[-1]["epoch"]) if history else 0,
                      history[-1]["wall_time"] if history else 0.0, history)


def comparison_table(rows: list[RunSummary]) -> str:
    """The comparison as a GitHub-flavoured markdown table, one row per run."""
    cells = [(r.run, r.model, f"{r.params:,}", _pct(r.best_val_acc), _pct(r.final_val_acc), r.epochs,
              format_duration(r.wall_time)) for r in rows]
    return markdown_table(HEADER, cells, align="llrrrrr")


def compare(run_dirs: list[str | Path], png: str | Path | None = None) -> tuple[str, Path]:
    """The markdown table of ``run_dirs`` and the path of the overlay figure (default: ``compare.png``
    beside the first run). Raises :class:`CheckpointError` for a folder that is not a run, and
    :class:`MissingDependencyError` without matplotlib."""
    require("matplotlib", purpose="convzoo compare")
    rows = [summarize(d) for d in run_dirs]
    png = Path(png) if png is not None else Path(run_dirs[0]).resolve().parent / "compare.png"
    labels = _labels(rows, run_dirs)
    plot_compare([(label, r.history) for label, r in zip(labels, rows)], png)
    return comparison_table(rows), png


def format_duration(seconds: float) -> str:
    """``'1h 02m'``, ``'3m 05s'`` or ``'12.3s'``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


def _pct(acc: float | None) -> str:
    return "-" if acc is None else f"{100 * acc:.2f}%"


def _labels(rows: list[RunSummary], run_dirs: list[str | Path]) -> list[str]:
    """Run folder names, or their paths where two names clash."""
    names = [r.run for r in rows]
    return [str(d) if names.count(r.run) > 1 else r.run for r, d in zip(rows, run_dirs)]

