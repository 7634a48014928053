"""``convzoo eval``: top-1, top-5, per-class accuracy and a confusion matrix of a run or a checkpoint."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import ArrayDataset, BatchLoader
from ..errors import CheckpointError, ConfigError, ConvzooWarning, DataError
from ..optimize import optimize_for_inference
from ..preprocess import recorded_preprocessing
from ..runtime import bf16_pays, resolve_device
from ..weights import load_checkpoint
from .build import NORMALIZATION, build_model
from .data import DataSpec, load_eval_data, load_run_data, resample_for, to_bgr
from .extras import require
from .metrics import Tally, evaluate
from .plots import plot_confusion
from .recipes import from_dict
from .runfolder import CONFIG_FILE, WEIGHTS_FILE, find_checkpoint, load_model_weights, read_config, read_state


@dataclass
class Evaluated:
    """What was evaluated, on what, and the tally; ``confusion_png`` is where the matrix was drawn."""

    model: str
    checkpoint: Path
    epoch: int | None
    data: str
    classes: list[str]
    tally: Tally
    confusion_png: Path

    def as_dict(self) -> dict[str, Any]:
        """top1, top5, n, per-class accuracy and the provenance, JSON-friendly."""
        per_class = {c: (None if a != a else a) for c, a in zip(self.classes, self.tally.per_class())}
        return dict(top1=self.tally.top1_acc, top5=self.tally.top5_acc, n=self.tally.n, per_class=per_class,
                    model=self.model, checkpoint=str(self.checkpoint), epoch=self.epoch, data=self.data,
                    confusion_png=str(self.confusion_png))


@dataclass
class _Target:
    model: nn.Module
    name: str
    checkpoint: Path
    epoch: int | None
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bgr: bool
    input_size: tuple[int, int]
    resample: str
    spec: DataSpec | None
    png: Path


def evaluate_target(target: str | Path, data: str | Path | None = None, which: str = "best",
                    batch_size: int = 256, device: str = "auto", preprocessing: str | None = None) -> Evaluated:
    """Evaluate a run folder (its ``which`` checkpoint), a checkpoint folder inside a run, or a checkpoint
    file, on ``data``'s test split, or without ``data`` on the run's validation split.

    Inputs are normalised as recorded with the weights: the run's normalisation, a checkpoint's own
    (``extra`` mean/std written by the trainer), else its weight record's preprocessing (``weights_meta``,
    else ``default_cfg``). ``preprocessing`` overrides that with a mode, with a :class:`ConvzooWarning` when
    it differs. On ``device`` ('auto': CUDA when available, 'cpu' or 'cuda') a BatchNorm-folded,
    channels-last copy of the model runs, under bfloat16 autocast on CUDA. The confusion matrix is drawn
    beside the checkpoint (``confusion_png``). Raises :class:`CheckpointError`, :class:`ConfigError`,
    :class:`DataError`, or :class:`MissingDependencyError` without matplotlib."""
    if which not in ("best", "last"):
        raise ConfigError(f"checkpoint must be best or last, got {which!r}")
    dev = resolve_device(device)
    require("matplotlib", purpose="convzoo eval")
    t = _resolve(Path(target), which)
    if preprocessing is not None:
        t.mean, t.std, t.bgr = _override(t, preprocessing)
    if data is not None:
        ds = load_eval_data(data, t.input_size, t.resample)
        described = str(data)
    elif t.spec is not None:
        ds = load_run_data(t.spec)[1]
        described = f"validation split of the run ({t.spec.describe()})"
    else:
        raise ConfigError(f"{target} is not inside a run folder: pass --data to evaluate it")
    if t.bgr:
        ds = to_bgr(ds)
    if ds.classes != t.classes:
        raise DataError(f"{described}: expected the classes the model was trained on ({', '.join(t.classes)}), "
                        f"found {', '.join(ds.classes)}")
    tally = evaluate(optimize_for_inference(t.model).to(dev), _batches(ds, t, batch_size, dev), len(t.classes),
                     bf16=bf16_pays(dev))
    plot_confusion(tally.confusion, t.classes, t.png,
                   f"{t.name}: top-1 {tally.top1_acc:.4f} on {tally.n} images")
    return Evaluated(t.name, t.checkpoint, t.epoch, described, t.classes, tally, t.png)


def _mode_of(mean: tuple[float, ...], std: tuple[float, ...], bgr: bool) -> str:
    """The preprocessing mode with this normalisation, else the numbers."""
    for mode, (m, s, b) in NORMALIZATION.items():
        if b == bgr and all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip((*m, *s), (*mean, *std))):
            return mode
    return f"mean {list(mean)} std {list(std)}"


def _override(t: _Target, mode: str) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """The normalisation of ``mode``, with a :class:`ConvzooWarning` when it differs from the one recorded
    for ``t``."""
    if mode not in NORMALIZATION:
        raise ConfigError(f"preprocessing mode must be one of {', '.join(NORMALIZATION)}, got {mode!r}")
    recorded = _mode_of(t.mean, t.std, t.bgr)
    if recorded != mode:
        warnings.warn(f"--preprocessing {mode} differs from the {recorded!r} preprocessing recorded with "
                      f"{t.checkpoint}; using {mode!r}", ConvzooWarning, stacklevel=3)
    mean, std, bgr = NORMALIZATION[mode]
    return tuple(mean), tuple(std), bgr


def _batches(ds: ArrayDataset, t: _Target, batch_size: int, device: torch.device) -> BatchLoader:
    return BatchLoader(ds, batch_size, mean=t.mean, std=t.std, device=device, channels_last=True)


def _resolve(path: Path, which: str) -> _Target:
    """Find the model, its checkpoint and its run (if any) from what the user named."""
    if not path.exists():
        raise CheckpointError(f"no run folder or checkpoint at {path}")
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return _from_run(path, path / which, path / "confusion.png")
    folder = path if path.is_dir() else path.parent
    if (folder.parent / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        return _from_run(folder.parent, folder, folder.parent / f"confusion-{folder.name}.png")
    return _from_checkpoint(path)


def _from_run(run_dir: Path, checkpoint: Path, png: Path) -> _Target:
    config = read_config(run_dir)
    found = find_checkpoint(checkpoint)
    if found is None:
        raise CheckpointError(f"{run_dir} has no complete {checkpoint.name} checkpoint (no epoch finished?)")
    recipe = from_dict(config["recipe"])
    model = build_model(recipe, config["num_classes"])
    load_model_weights(model, found)
    spec = DataSpec.from_dict(config["data"])
    norm = config["normalization"]
    return _Target(model, config["model"], found, read_state(found)["epoch"], config["classes"],
                   tuple(norm["mean"]), tuple(norm["std"]), norm["bgr"], spec.input_size, spec.resample, spec, png)


def _from_checkpoint(path: Path) -> _Target:
    model = load_checkpoint(path)
    info = model.checkpoint_info
    cfg = model.default_cfg
    mode = recorded_preprocessing(model)
    mean, std, bgr = NORMALIZATION.get(mode, (None, None, False))
    mean, std = info.extra.get("mean", mean), info.extra.get("std", std)
    if mean is None or std is None:
        raise CheckpointError(f"{info.path}: no normalisation known for preprocessing {mode!r}")
    classes = info.class_names or [str(i) for i in range(model.num_classes)]
    return _Target(model, info.model, info.path, info.extra.get("epoch"), classes, tuple(mean), tuple(std),
                   info.extra.get("bgr", bgr), tuple(cfg.input_size[1:]),
                   resample_for((getattr(model, "weights_meta", None) or cfg).interpolation), None,
                   info.path.with_name(f"{info.path.stem}.confusion.png"))
