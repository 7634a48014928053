"""``convzoo eval``: top-1, top-5, per-class accuracy and a confusion matrix of a run, a checkpoint, or
imported weights.

The images are decoded once into memory or streamed from the files by loader processes (``pipeline``),
with the same pixels either way: the streamed evaluation transform is the in-memory one
(``ImageTransform``), image by image.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import ArrayDataset
from ..data.calibration import calibration_images
from ..data.imagenet import imagenet_wnids
from ..data.streaming import StreamLoader, resolve_workers
from ..data.transforms import ImageTransform
from ..errors import CheckpointError, ConfigError, ConvzooWarning
from ..factory import create_model
from ..preprocess import MODES, Normalize
from ..runtime import GuardCount, GuardResult, Predictor, choose_precision, inference_model, runtime_device
from ..weights import load_checkpoint
from .build import build_model, recorded_run_preprocessing
from .calibration import run_calibration
from .data import DataSpec, Source, eval_batches, open_eval_data, open_run_data
from .extras import require
from .metrics import Tally, tally_logits
from .plots import plot_confusion
from .recipes import from_dict
from .runfolder import CONFIG_FILE, WEIGHTS_FILE, find_checkpoint, load_model_weights, read_config, read_state


# The default batch by device: on the CPU a larger batch gains little and costs memory (an Xception at 299
# evaluating batches of 32 peaks at 2.4 GB, and the activations grow with the batch); a GPU wants large batches.
BATCH_SIZES = {"cpu": 32, "cuda": 256}


@dataclass
class Evaluated:
    """What was evaluated, on what, and the tally; ``confusion_png`` is where the matrix was drawn and
    ``skipped`` the number of unreadable images left out."""

    model: str
    checkpoint: Path
    epoch: int | None
    data: str
    classes: list[str]
    tally: Tally
    confusion_png: Path
    skipped: int = 0
    runtime: str = "eager"
    precision: str = "fp32"
    guard: GuardResult | None = None

    def as_dict(self) -> dict[str, Any]:
        """top1, top5, n, per-class accuracy, the provenance and the runtime, and the accuracy guard (None
        in fp32; percent and points, as :class:`GuardResult`), JSON-friendly."""
        per_class = {c: (None if a != a else a) for c, a in zip(self.classes, self.tally.per_class())}
        guard = None if self.guard is None else {**asdict(self.guard), "drop": self.guard.drop,
                                                 "passed": self.guard.passed}
        return dict(top1=self.tally.top1_acc, top5=self.tally.top5_acc, n=self.tally.n, per_class=per_class,
                    model=self.model, checkpoint=str(self.checkpoint), epoch=self.epoch, data=self.data,
                    confusion_png=str(self.confusion_png), skipped=self.skipped, runtime=self.runtime,
                    precision=self.precision, guard=guard)


@dataclass
class EvalOptions:
    """How to read the evaluation data: ``labels`` (the CSV of a flat folder), ``pipeline`` ('auto',
    'memory' or 'stream'), loader ``workers``, ``batch_size`` (None: :data:`BATCH_SIZES` for the device),
    ``device`` ('auto', 'cpu' or 'cuda') and ``preprocessing`` (a mode overriding the recorded one, with a
    :class:`ConvzooWarning` when it differs). The model runs in ``runtime`` (:data:`convzoo.runtime.RUNTIMES`)
    at ``precision`` (None: bf16 where it pays, else fp32; int8 calibrated on the images of ``calibration``, a
    folder or glob, by default a run's training data). A precision named other than fp32 is checked against
    fp32 on the same images: the accuracy guard (:class:`convzoo.runtime.GuardResult`)."""

    labels: str | None = None
    pipeline: str = "auto"
    workers: int = 2
    batch_size: int | None = None
    device: str = "auto"
    preprocessing: str | None = None
    runtime: str = "eager"
    precision: str | None = None
    calibration: str | None = None


@dataclass
class _Target:
    model: nn.Module
    name: str
    checkpoint: Path
    epoch: int | None
    classes: list[str]
    transform: ImageTransform
    normalize: Normalize
    spec: DataSpec | None
    png: Path


def evaluate_target(target: str | Path, data: str | Path | None = None, which: str = "best",
                    opts: EvalOptions = EvalOptions()) -> Evaluated:
    """Evaluate a run folder (its ``which`` checkpoint), a checkpoint folder inside a run, or a checkpoint
    file, on ``data`` (CIFAR's test split, an image folder, a flat folder with ``opts.labels``, tar
    shards), or without ``data`` on the run's validation split.

    Inputs are prepared as the run validated them: scaled to cover the run's input size, centre-cropped and
    normalised with the one preprocessing the run records; a checkpoint outside a run as ``predict``
    prepares them, by its weight record (a run's checkpoints carry the run's). The model runs as ``opts``
    says (:func:`convzoo.runtime.inference_model`: by default a BatchNorm-folded, channels-last copy on
    ``opts.device``, in bf16 where it pays); a precision named other than fp32 comes with the accuracy guard
    against fp32 (``Evaluated.guard``). The confusion matrix is drawn beside the checkpoint. Raises
    :class:`CheckpointError`, :class:`ConfigError`, :class:`DataError`, or :class:`MissingDependencyError`
    without matplotlib (or the runtime's package)."""
    if which not in ("best", "last"):
        raise ConfigError(f"checkpoint must be best or last, got {which!r}")
    require("matplotlib", purpose="convzoo eval")
    return _score(_resolve(Path(target), which), data, opts)


def evaluate_weights(model_name: str, weights: str | Path, data: str | Path,
                     opts: EvalOptions = EvalOptions()) -> Evaluated:
    """Score weights imported into ``model_name`` (``create_model(model_name, weights=weights)``) on ``data``,
    without a run: each image prepared by the weights' own evaluation transform, as ``predict`` prepares it
    (shorter side to size / crop_pct with the record's interpolation, centre crop, the record's
    preprocessing). For a 1000-class model without class names the classes are ImageNet's WordNet ids, so
    a folder of wnid class folders (all of them, or some: a subset evaluation) or a flat folder with a labels
    file of wnids or indices is scored directly. The confusion matrix is drawn beside the weights file."""
    require("matplotlib", purpose="convzoo eval")
    model = create_model(model_name, weights=weights).eval()
    names = getattr(model, "class_names", None)
    classes = list(names) if names else imagenet_wnids() if model.num_classes == 1000 else \
        [str(i) for i in range(model.num_classes)]
    transform = ImageTransform.from_model(model)
    path = Path(weights)
    target = _Target(model, model.default_cfg.name, path, None, classes, transform, transform.normalizer, None,
                     path.with_name(f"{path.stem}.confusion.png"))
    return _score(target, data, opts)


def _score(t: _Target, data: str | Path | None, opts: EvalOptions) -> Evaluated:
    """Evaluate target ``t`` on ``data`` (None: its run's validation split) as ``opts`` says."""
    dev = runtime_device(opts.device, opts.runtime)
    precision = choose_precision(opts.runtime, opts.precision, dev, calibrating=opts.calibration is not None)
    if opts.preprocessing is not None:
        t.normalize = _override(t, opts.preprocessing)
    if data is not None:
        source: Source = open_eval_data(str(data), t.classes, t.transform, labels=opts.labels, pipeline=opts.pipeline)
        described = str(data)
    elif t.spec is not None:
        source = open_run_data(t.spec)[1].val
        described = f"validation split of the run ({t.spec.describe()})"
    else:
        raise ConfigError(f"{t.checkpoint} is not inside a run folder: pass --data to evaluate it")
    calibration = _calibration(t, opts.calibration) if precision == "int8" else None
    model = inference_model(t.model, opts.runtime, precision, calibration, device=dev)
    guarded = opts.precision not in (None, "fp32")
    batches = eval_batches(source, t.transform, t.normalize, opts.batch_size or BATCH_SIZES[dev.type], device=dev,
                           workers=resolve_workers(opts.workers))
    tally, guard = _tally(model, inference_model(t.model, "eager", "fp32", device=dev) if guarded else None,
                          batches, len(t.classes))
    skipped = len(batches.stats.skipped) if isinstance(batches, StreamLoader) else \
        len(source.skipped) if isinstance(source, ArrayDataset) else 0
    plot_confusion(tally.confusion, t.classes, t.png, f"{t.name}: top-1 {tally.top1_acc:.4f} on {tally.n} images")
    return Evaluated(t.name, t.checkpoint, t.epoch, described, t.classes, tally, t.png, skipped, opts.runtime,
                     precision, guard)


def _tally(model: Predictor, reference: Predictor | None, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
           num_classes: int) -> tuple[Tally, GuardResult | None]:
    """The tally of ``model`` over ``batches`` and, with a ``reference`` (fp32), the accuracy guard of
    ``model`` against it, in one pass over the images."""
    count = GuardCount() if reference is not None else None

    def logits() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in batches:
            out = model(x)
            if count is not None:
                count.add(reference(x), out, y)
            yield out, y

    tally = tally_logits(logits(), num_classes)
    return tally, count.result() if count is not None else None


def _calibration(t: _Target, sources: str | None) -> list[torch.Tensor] | None:
    """int8 calibration images for ``t``, prepared as its evaluation images are: the files of ``sources``,
    else its run's training data, else None (which :func:`inference_model` refuses)."""
    def inputs(paths: list[Path]) -> torch.Tensor:
        return t.normalize(torch.stack([t.transform.pixels(p) for p in paths]))

    if sources is not None:
        return calibration_images(t.model, sources, transform=inputs)
    return run_calibration(t.spec, t.transform, t.normalize) if t.spec is not None else None


def _override(t: _Target, mode: str) -> Normalize:
    """The normalisation of ``mode``, with a :class:`ConvzooWarning` when it differs from the one recorded
    for ``t``."""
    if mode not in MODES:
        raise ConfigError(f"preprocessing mode must be one of {', '.join(MODES)}, got {mode!r}")
    chosen = Normalize(mode=mode)
    if chosen != t.normalize:
        warnings.warn(f"--preprocessing {mode} differs from the {t.normalize.describe()} preprocessing recorded "
                      f"with {t.checkpoint}; using {mode!r}", ConvzooWarning, stacklevel=4)
    return chosen


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
    normalize = recorded_run_preprocessing(config, str(run_dir / CONFIG_FILE))
    transform = ImageTransform.with_normalize(spec.input_size, 1.0, spec.resample, normalize)
    return _Target(model, config["model"], found, read_state(found)["epoch"], config["classes"], transform,
                   normalize, spec, png)


def _from_checkpoint(path: Path) -> _Target:
    """A checkpoint outside a run, its images prepared by its weight record as ``predict`` prepares them."""
    model = load_checkpoint(path)
    info = model.checkpoint_info
    classes = info.class_names or [str(i) for i in range(model.num_classes)]
    transform = ImageTransform.from_model(model)
    return _Target(model, info.model, info.path, info.extra.get("epoch"), classes, transform, transform.normalizer,
                   None, info.path.with_name(f"{info.path.stem}.confusion.png"))
