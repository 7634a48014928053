"""The data of a run and of an evaluation: which source, which validation set, at which size, and through
which pipeline (decoded once into memory, or streamed from the files by loader processes).

A :class:`DataSpec` is written into the run's ``config.json`` so that ``--resume`` and ``convzoo eval``
rebuild the exact data and validation split later. Sources: the embedded CIFAR-10 subset, CIFAR by name,
folder or archive (always in memory), an image folder with one subfolder per class, a flat folder with a
labels file (both in memory or streamed), and WebDataset tar shards (always streamed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Union

import torch

from ..data import ArrayDataset, BatchLoader, load_data, load_train_val, train_val_split
from ..data.augment import EvalTransform, TrainTransform, batch_mix
from ..data.cifar import find_cifar_folder
from ..data.imagefolder import cover_pixels, load_file_list
from ..data.imagenet import FileList, class_mismatch, labels_file_classes, scan_class_folders, scan_labels_file
from ..data.shards import ShardSet, is_shard_source, open_shards, shard_loader
from ..data.streaming import StreamLoader, choose_pipeline, folder_loader
from ..data.transforms import ImageTransform
from ..errors import ConfigError, DataError
from ..preprocess import Normalize
from ..utils.typed import coerce
from .distributed import DistEnv, broadcast
from .extras import require
from .recipes import Recipe

Source = Union[ArrayDataset, FileList, ShardSet]
Batches = Union[BatchLoader, StreamLoader]


@dataclass(frozen=True)
class DataSpec:
    """``source``: None (the embedded CIFAR-10 subset), a CIFAR name, folder or archive, an image folder
    (one subfolder per class, or flat with the ``labels`` CSV file), or tar shards. ``val_source``: a
    separate validation set (its test split), else ``val_fraction`` of the training data is held out with
    ``split_seed``. Images are trained at ``input_size`` (H, W), resized with ``resample``; ``pipeline`` is
    'memory' or 'stream' ('auto' until :func:`open_run_data` has chosen)."""

    source: str | None
    val_source: str | None
    val_fraction: float
    split_seed: int
    input_size: tuple[int, int]
    resample: str = "bilinear"
    pipeline: str = "memory"
    labels: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly values."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        """The spec recorded by :meth:`as_dict` (a run recorded before pipelines existed was in memory);
        :class:`ConfigError` naming a field that is missing or does not fit its type."""
        return coerce(d, cls, "data")

    def describe(self) -> str:
        """A short human-readable name of the data."""
        name = self.source or "embedded CIFAR-10 subset"
        val = self.val_source or f"{self.val_fraction:g} held out (seed {self.split_seed})"
        return f"{name}, validation: {val}"


@dataclass
class RunSources:
    """The opened data of a run: in memory (:class:`ArrayDataset`) or to stream (a ``FileList`` or a
    ``ShardSet``), and the class names."""

    train: Source
    val: Source
    classes: list[str]


def absolute_source(source: str | Path | None) -> str | None:
    """An existing path made absolute (so a run can be evaluated from another folder); names stay as given."""
    if source is None:
        return None
    path = Path(source)
    return str(path.resolve()) if path.exists() else str(source)


def resample_for(interpolation: str) -> str:
    """The resize filter for a model's ``interpolation`` ('bicubic' or 'bilinear')."""
    return "bicubic" if interpolation == "bicubic" else "bilinear"


def source_kind(source: str | None, labels: str | None = None) -> str:
    """What a data source is: 'embedded', 'cifar' (a name, folder or archive), 'folder' (one subfolder per
    class), 'labelled' (a folder with a labels file) or 'shards'."""
    if source is None:
        return "embedded"
    if is_shard_source(source):
        require("webdataset", purpose="reading tar shards")
        return "shards"
    if labels is not None:
        return "labelled"
    path = Path(source)
    return "folder" if path.is_dir() and any(path.iterdir()) and not find_cifar_folder(path) else "cifar"


def load_run_data(spec: DataSpec) -> tuple[ArrayDataset, ArrayDataset]:
    """The in-memory training and validation sets of ``spec`` (a CIFAR source or an image folder)."""
    return load_train_val(spec.source, val_source=spec.val_source, val_fraction=spec.val_fraction,
                          seed=spec.split_seed, input_size=spec.input_size, resample=spec.resample)


def open_run_data(spec: DataSpec, env: DistEnv = DistEnv()) -> tuple[DataSpec, RunSources]:
    """The data of ``spec``, opened through its pipeline, and ``spec`` with the pipeline chosen: 'auto'
    streams an image folder whose images would not fit in memory at the training size (rank 0's choice
    under torchrun). Raises :class:`ConfigError` for a pipeline the source cannot take, :class:`DataError`
    for unusable data."""
    kind = source_kind(spec.source, spec.labels)
    fixed = {"embedded": "memory", "cifar": "memory", "shards": "stream"}.get(kind)
    if fixed is not None:
        if spec.pipeline not in ("auto", fixed):
            raise ConfigError(f"pipeline {spec.pipeline} cannot read {spec.source or 'the embedded subset'}: "
                              f"{'CIFAR data is read into memory' if fixed == 'memory' else 'tar shards stream'}")
        spec = replace(spec, pipeline=fixed)
        if kind == "shards":
            return spec, _open_shard_run(spec)
        train, val = load_run_data(spec)
        return spec, RunSources(train, val, train.classes)
    files = scan_source(spec.source, spec.labels)
    force = None if spec.pipeline == "auto" else spec.pipeline
    spec = replace(spec, pipeline=broadcast(choose_pipeline(len(files), spec.input_size, force=force), env))
    if spec.pipeline == "memory" and kind == "folder":
        train, val = load_run_data(spec)
        return spec, RunSources(train, val, train.classes)
    if spec.pipeline == "memory":
        files = load_file_list(files, spec.input_size, lambda p: cover_pixels(p, spec.input_size, spec.resample))
    if spec.val_source is None:
        train, val = train_val_split(files, spec.val_fraction, spec.split_seed)
        return spec, RunSources(train, val, files.classes)
    return spec, RunSources(files, _open_val(spec, files.classes), files.classes)


def scan_source(source: str, labels: str | None) -> FileList:
    """The files of an image folder: one subfolder per class (classes sorted), or flat with a labels file
    (the classes it names)."""
    if labels is None:
        return scan_class_folders(source)
    return scan_labels_file(source, labels, labels_file_classes(source, labels))


def _open_val(spec: DataSpec, classes: list[str]) -> Source:
    """The separate validation set of a run whose training data is not CIFAR: in memory or streamed as the
    run's pipeline says, with exactly the training classes."""
    kind = source_kind(spec.val_source)
    if kind == "shards":
        return open_shards(spec.val_source, len(classes))
    if kind == "folder" and spec.pipeline == "stream":
        return scan_class_folders(spec.val_source, classes, subset=False)
    val = load_data(spec.val_source, split="test", input_size=spec.input_size, resample=spec.resample)
    if val.classes != classes:
        raise DataError(f"{spec.val_source}: {class_mismatch(classes, val.classes)}")
    return val


def _open_shard_run(spec: DataSpec) -> RunSources:
    """Training shards (classes: the indices up to the largest label) and their validation set."""
    if spec.val_source is None:
        raise ConfigError(f"tar shards {spec.source} hold no validation split: pass a validation set (--val-data)")
    train = open_shards(spec.source, None)
    classes = [str(i) for i in range(int(train.labels.max()) + 1)]
    return RunSources(train, _open_val(replace(spec, pipeline="stream"), classes), classes)


def train_batches(train: Source, recipe: Recipe, spec: DataSpec, normalize: Normalize, num_classes: int, env: DistEnv,
                  device: torch.device, channels_last: bool, workers: int) -> Batches:
    """The seeded training batches of a run. In memory: global batches (the trainer takes this rank's
    shard), the seed's flip/shift/cutout; streamed: this rank's part of each global batch, the recipe's
    ImageNet augmentation, empty batches kept so that every rank takes every step, and loader processes
    started for each epoch (so that they are gone while those of the validation set run: two sets of
    forked processes would each map the trainer's memory pages). ``normalize``: the run's preprocessing,
    the same in both pipelines."""
    mix = batch_mix(recipe.augment(), num_classes)
    if isinstance(train, ArrayDataset):
        return BatchLoader(train, recipe.batch_size, normalize=normalize, train=True, flip=recipe.flip,
                           shift=recipe.shift, seed=recipe.seed, device=device, channels_last=channels_last,
                           cutout=recipe.cutout, mix=mix)
    transform = TrainTransform(recipe.augment(), spec.input_size, spec.resample, normalize)
    common = dict(train=True, seed=recipe.seed, rank=env.rank, world_size=env.world_size, workers=workers,
                  device=device, channels_last=channels_last, mix=mix, keep_empty=True)
    if isinstance(train, FileList):
        return folder_loader(train, transform, recipe.batch_size, persistent=False, **common)
    return shard_loader(train, transform, recipe.batch_size, **common)


def eval_batches(data: Source, transform: ImageTransform, normalize: Normalize, batch_size: int, *,
                 device: torch.device, channels_last: bool = True, workers: int = 2, env: DistEnv = DistEnv(),
                 persistent: bool = True) -> Batches:
    """Batches of this rank's part of evaluation ``data``: in memory (images already at the model's size),
    or streamed, each image resized and cropped by ``transform`` and normalised by ``normalize``.
    ``persistent``: keep the loader processes between passes."""
    if isinstance(data, ArrayDataset):
        part = data.subset(torch.arange(len(data)).tensor_split(env.world_size)[env.rank])
        return BatchLoader(part, batch_size, normalize=normalize, device=device, channels_last=channels_last)
    per_image = EvalTransform(transform, normalize)
    common = dict(train=False, rank=env.rank, world_size=env.world_size, workers=workers, device=device,
                  channels_last=channels_last)
    if isinstance(data, FileList):
        return folder_loader(data, per_image, batch_size, persistent=persistent, **common)
    return shard_loader(data, per_image, batch_size, **common)


def open_eval_data(source: str, classes: list[str], transform: ImageTransform, *, labels: str | None = None,
                   pipeline: str = "auto") -> Source:
    """Evaluation data for a model with ``classes``: CIFAR's test split (in memory, resized to the model's
    size), an image folder (class folders named as the model's classes; a folder holding some of them is a
    subset evaluation), a flat folder with a ``labels`` file, or tar shards. ``pipeline`` 'memory' decodes
    every file once with ``transform`` (``ImageTransform.pixels``), 'stream' leaves a ``FileList`` to
    stream, 'auto' picks by size. Raises :class:`DataError` naming at most a few mismatched classes."""
    kind = source_kind(source, labels)
    if kind == "shards":
        return open_shards(source, len(classes))
    if kind == "cifar":
        ds = load_data(source, split="test", input_size=transform.size, resample=resample_for(transform.interpolation))
        if ds.classes != classes:
            raise DataError(f"{source}: {class_mismatch(classes, ds.classes)}")
        return ds
    files = scan_labels_file(source, labels, classes) if labels else scan_class_folders(source, classes)
    force = None if pipeline == "auto" else pipeline
    if choose_pipeline(len(files), transform.size, force=force) == "stream":
        return files
    return load_file_list(files, transform.size, transform.pixels)


def to_bgr(ds: ArrayDataset) -> ArrayDataset:
    """``ds`` with its colour channels reversed."""
    return ArrayDataset(ds.images.flip(1), ds.labels, ds.classes, ds.skipped)
