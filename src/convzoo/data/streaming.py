"""Image collections of any size: files decoded on the fly by DataLoader worker processes.

The order of an epoch is a function of ``(seed, epoch)`` and the augmentation of each image a function of
``(seed, epoch, file index)``, whatever the number of workers, so an epoch can start at any step and give
the batches an uninterrupted epoch gives from there (bit for bit on the CPU); that is how ``--resume``
continues from the middle of an epoch. Under ``torchrun`` every global batch of ``batch_size`` images is
split over the ranks as the in-memory trainer splits it (contiguous shards), and each process opens only
the files of its own shard.

Unreadable images are skipped and counted (:attr:`StreamLoader.stats`); a source where more than half of
the files read fail stops with :class:`DataError`, and so does an image folder once every file of one of its
classes has been tried and none could be read (:class:`UnreadableClasses`), without decoding anything ahead.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from numbers import Integral
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from ..errors import ConfigError, ConvzooError, ConvzooWarning, DataError, ImageError
from .augment import BatchMix, batch_seed, mix_seed, sample_seed, seeded
from .images import DEFAULT_MAX_PIXELS, open_image
from .imagenet import FileList

log = logging.getLogger(__name__)

PIPELINES = ("memory", "stream")
# In-memory data larger than this (uint8 pixels at the training size) streams instead: the smaller of
# 2 GiB and a quarter of the machine's memory, shared by the processes of one machine.
MEMORY_BUDGET = 2 << 30
# A source stops once more than this fraction of the images read fail, checked after MIN_CHECKED images
# and at the end of each epoch.
MAX_BAD_FRACTION = 0.5
MIN_CHECKED = 64
_JPEG = b"\xff\xd8\xff"


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
    """``workers`` loader processes, capped at the usable cores with a one-line warning; 0 loads in the
    calling process. Raises :class:`ConfigError` for a negative or non-integer value."""
    if not isinstance(workers, Integral) or isinstance(workers, bool) or workers < 0:
        raise ConfigError(f"workers must be an integer of at least 0, got {workers!r}")
    cores = usable_cores()
    if workers > cores:
        warnings.warn(f"workers {workers} is more than the {cores} CPU cores of this machine; using {cores}",
                      ConvzooWarning, stacklevel=2)
        return cores
    return int(workers)


def decode_file(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """The image at ``path`` as uint8 RGB (3, H, W), upright by its EXIF orientation.

    JPEG files are decoded by torchvision (:func:`decode_bytes`), every other format by :func:`open_image`
    (transparency on white, 16-bit grayscale scaled, as the in-memory path reads them). Raises
    :class:`ImageError` for a missing, empty, damaged, truncated or oversized file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"expected an image file at {path}, found {type(exc).__name__}: {exc}") from None
    if not data.startswith(_JPEG):
        return torch.from_numpy(np.asarray(open_image(path, max_pixels), dtype=np.uint8).copy()).permute(2, 0, 1)
    return decode_bytes(data, str(path), max_pixels)


def decode_bytes(data: bytes, where: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """An encoded image as uint8 RGB (3, H, W), decoded by torchvision: JPEG by libjpeg-turbo (the same
    pixels as Pillow's) upright by its EXIF orientation, other formats by ``decode_image`` (an alpha
    channel is dropped). The size is checked from the header (Pillow's parser) before decoding. Raises
    :class:`ImageError` naming ``where`` for damaged, truncated or oversized data."""
    try:
        with Image.open(BytesIO(data)) as im:
            width, height = im.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageError(f"{where}: expected at most {max_pixels:,} pixels, found {width}x{height} = "
                             f"{width * height:,} (pass a larger max_pixels to allow it)")
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if data.startswith(_JPEG):
            return decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        return decode_image(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except ImageError:
        raise
    except Exception as exc:
        # torchvision reports damaged files as RuntimeError, Pillow's header parser with several types.
        reason = str(exc).rsplit(", ", 1)[-1]
        raise ImageError(f"{where}: expected a complete image, found a damaged one ({type(exc).__name__}: "
                         f"{reason})") from None


class Ticket(NamedTuple):
    """What a worker is asked for: the file index, and the seed of its augmentation (None: no randomness)."""

    index: int
    seed: int | None


class EpochBatches(Sampler):
    """The batches of one process in one epoch, as lists of :class:`Ticket`.

    ``train``: the files in a random order of ``(seed, epoch)`` (``torch.randperm``), cut into global
    batches of ``batch_size`` (the incomplete last one dropped); this rank takes its contiguous shard of
    each, as the in-memory trainer does. Otherwise: the files in order, this rank's contiguous block of
    them (``tensor_split``), in batches of ``batch_size``, the last one kept whatever its size.
    :meth:`set_epoch` picks the epoch and the step to start at.
    """

    def __init__(self, n: int, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        for name, value, low in (("batch size", batch_size, 1), ("world size", world_size, 1), ("seed", seed, 0)):
            if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer of at least {low}, got {value!r}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must lie in 0..{world_size - 1}, got {rank!r}")
        if train and batch_size % world_size:
            raise ConfigError(f"batch size {batch_size} does not split evenly over {world_size} processes")
        if train and batch_size > n:
            raise DataError(f"batch size {batch_size} is larger than the data set ({n} images)")
        self.n, self.batch_size, self.train = n, batch_size, train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_step = 0, 0
        self.block = torch.arange(n).tensor_split(world_size)[rank]

    @property
    def steps(self) -> int:
        """The number of batches of a whole epoch (the same on every rank when training)."""
        return self.n // self.batch_size if self.train else -(-len(self.block) // self.batch_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate over ``epoch`` from batch ``start_step`` (0-based) on."""
        if not isinstance(epoch, Integral) or epoch < 0 or not isinstance(start_step, Integral) \
                or not 0 <= start_step <= self.steps:
            raise ConfigError(f"expected epoch >= 0 and a start step in 0..{self.steps}, got {epoch!r}, {start_step!r}")
        self.epoch, self.start_step = int(epoch), int(start_step)

    def __len__(self) -> int:
        return self.steps - self.start_step

    def order(self) -> torch.Tensor:
        """The file indices of the epoch in the order this process's batches take them."""
        if not self.train:
            return self.block
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=gen)[:self.steps * self.batch_size]
        return order.view(self.steps, self.world_size, -1)[:, self.rank].reshape(-1)

    def __iter__(self) -> Iterator[list[Ticket]]:
        order = self.order()
        local = self.batch_size // self.world_size if self.train else self.batch_size
        for step in range(self.start_step, self.steps):
            indices = order[step * local:(step + 1) * local].tolist()
            yield [Ticket(i, sample_seed(self.seed, self.epoch, i) if self.train else None) for i in indices]


class Sample(NamedTuple):
    """One loaded image: the model input (3, H, W) or None when unreadable, its label, why not, and the
    index of its file in a :class:`FileList` (None for a sample of a tar shard)."""

    image: torch.Tensor | None
    label: int
    error: str | None
    index: int | None


class ImageFileDataset(Dataset):
    """The files of a :class:`FileList` decoded by :func:`decode_file` and passed through ``transform``
    (decoded uint8 (3, h, w) -> model input (3, H, W)) under the global torch generator seeded with the
    ticket's seed. An unreadable file gives a :class:`Sample` without an image, and its reason."""

    def __init__(self, files: FileList, transform: Callable[[torch.Tensor], torch.Tensor],
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.files, self.transform, self.max_pixels = files, transform, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, ticket: Ticket) -> Sample:
        index, seed = ticket
        label = int(self.files.labels[index])
        try:
            image = decode_file(self.files.path(index), self.max_pixels)
        except ImageError as exc:
            return Sample(None, label, str(exc), index)
        return Sample(seeded(self.transform, image, seed), label, None, index)


class RawBatch(NamedTuple):
    """A collated batch as it leaves a worker: images (N, 3, H, W) or None when none was readable, labels
    (N,), the reasons of the skipped files and their :attr:`Sample.index` values, and how many files were
    asked for."""

    images: torch.Tensor | None
    labels: torch.Tensor
    skipped: tuple[str, ...]
    skipped_index: tuple[int | None, ...]
    attempted: int


def collate_samples(samples: Sequence[Sample]) -> RawBatch:
    """The readable samples stacked, the unreadable ones listed."""
    good = [s for s in samples if s.image is not None]
    bad = [s for s in samples if s.image is None]
    images = torch.stack([s.image for s in good]) if good else None
    labels = torch.tensor([s.label for s in good], dtype=torch.int64)
    return RawBatch(images, labels, tuple(s.error for s in bad), tuple(s.index for s in bad), len(samples))


class UnreadableClasses:
    """The files of an image folder (``files``) found unreadable, per class, since an image of their class
    was last read. Once they are every file of a class (each tried, none readable, over one pass or
    several) :meth:`update` raises :class:`DataError` naming the class folder and the first file's reason:
    training on a class without images would give a silently wrong model. The reasons of a class not yet
    seen readable are held back (:meth:`update`, :meth:`flush`), so that such a stop is one line."""

    def __init__(self, files: FileList) -> None:
        self.files = files
        self.sizes = np.bincount(files.labels, minlength=len(files.classes))
        self.readable = np.zeros(len(self.sizes), dtype=bool)
        self.bad: dict[int, dict[int, str]] = {}
        self.held: dict[int, list[str]] = {}

    def update(self, raw: RawBatch) -> list[str]:
        """Account for the readable and unreadable files of a loaded batch; returns the reasons to report
        now (those of classes seen readable)."""
        now: list[str] = []
        for label in raw.labels.unique().tolist():
            self.readable[label] = True
            self.bad.pop(label, None)
            now.extend(self.held.pop(label, []))
        for index, reason in zip(raw.skipped_index, raw.skipped):
            label = int(self.files.labels[index])
            seen = self.bad.setdefault(label, {})
            seen.setdefault(index, reason)
            if len(seen) == self.sizes[label]:
                raise DataError(self._message(label, seen))
            if self.readable[label]:
                now.append(reason)
            else:
                self.held.setdefault(label, []).append(reason)
        return now

    def flush(self) -> list[str]:
        """The reasons held back (at the end of a pass, no class being without a readable file)."""
        held = [reason for reasons in self.held.values() for reason in reasons]
        self.held.clear()
        return held

    def _message(self, label: int, seen: dict[int, str]) -> str:
        index, reason = next(iter(seen.items()))
        relative = Path(os.fsdecode(self.files.names[index]))
        where = (f"class folder {self.files.root / relative.parts[0]}" if len(relative.parts) > 1
                 else f"class {self.files.classes[label]} of {self.files.root}")
        return (f"{where}: expected at least one readable image, found none among the {len(seen)} of its files "
                f"read (first: {reason})")


@dataclass
class Progress:
    """Where an epoch stands: ``step`` of ``steps`` batches done (counting those before a resumed start),
    images delivered since the loader started, images/s over that time and the estimated seconds left."""

    step: int
    steps: int
    images: int
    images_per_s: float
    eta_s: float


@dataclass
class EpochStats:
    """What one epoch of a loader read: files asked for, files skipped (each 'path: reason'), batches and
    images delivered, and the wall time since its first batch was asked for."""

    epoch: int
    start_step: int
    steps: int
    step: int = 0
    attempted: int = 0
    images: int = 0
    skipped: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def progress(self) -> Progress:
        """Images/s and ETA for a progress display."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        done = self.step - self.start_step
        eta = (self.steps - self.step) * elapsed / done if done else math.inf
        return Progress(self.step, self.steps, self.images, self.images / elapsed, eta)


def _worker_message(exc: BaseException) -> str:
    """The original one-line message of an error re-raised from a worker (DataLoader appends the worker's
    traceback, whose last line is 'module.Type: message')."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) < 2:
        return str(exc)
    return lines[-1].split(": ", 1)[-1] if lines[-1].startswith(type(exc).__module__) else lines[-1]


class Schedule(Protocol):
    """What a :class:`StreamLoader` asks of the object that orders an epoch (:class:`EpochBatches`,
    ``shards.ShardStream``)."""

    seed: int
    epoch: int
    start_step: int

    @property
    def steps(self) -> int: ...

    def set_epoch(self, epoch: int, start_step: int = 0) -> None: ...


class StreamLoader:
    """Batches of model inputs from a streaming source, on ``device``.

    ``loader`` is a DataLoader whose batches are :class:`RawBatch` values and whose epochs ``schedule``
    orders (see :func:`folder_loader`). ``mix`` (mixup/cutmix) is applied to each batch on the device,
    seeded by :func:`batch_seed`; labels then become soft targets (N, classes). ``name`` names the source
    in errors. Iterating yields ``(x, y)``: x float32 (N, 3, H, W) (channels-last if asked), y int64 (N,).
    A batch none of whose images could be read is left out, or with ``keep_empty`` yielded as empty
    tensors x (0,) and y (0,), so that every process of a distributed run takes every step. ``classes``
    (an image folder's) stops the stream once a class has no readable file (see :class:`UnreadableClasses`).
    """

    def __init__(self, loader: DataLoader, schedule: Schedule, *, device: torch.device | str = "cpu",
                 channels_last: bool = False, mix: BatchMix | None = None, name: str = "data",
                 keep_empty: bool = False, classes: UnreadableClasses | None = None) -> None:
        self.loader, self.schedule, self.mix, self.name = loader, schedule, mix, name
        self.keep_empty, self.classes = keep_empty, classes
        self.device, self.channels_last = torch.device(device), channels_last
        self.stats = EpochStats(0, 0, schedule.steps)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the order and augmentation of ``epoch``, starting at batch ``start_step``."""
        self.schedule.set_epoch(epoch, start_step)

    def __len__(self) -> int:
        return self.schedule.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, step = self.schedule.epoch, self.schedule.start_step
        self.stats = EpochStats(epoch, step, self.schedule.steps, step)
        batches = iter(self.loader)
        try:
            for raw in batches:
                batch = self._receive(raw, step)
                step += 1
                if batch is not None:
                    yield batch
                elif self.keep_empty:
                    yield torch.empty(0, device=self.device), torch.empty(0, dtype=torch.int64, device=self.device)
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):
                raise
            _stop_workers(self.loader, batches)
            raise DataError(f"{self.name}: a data loading worker process stopped ({_worker_message(exc)}); "
                            f"out of memory? try fewer workers") from None
        except ConvzooError as exc:
            raise type(exc)(_worker_message(exc)) from None
        for reason in self.classes.flush() if self.classes is not None else ():
            log.warning("skipped %s", reason)
        self._check_bad(final=True)

    def _receive(self, raw: RawBatch, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        stats = self.stats
        stats.step, stats.attempted = step + 1, stats.attempted + raw.attempted
        stats.skipped.extend(raw.skipped)
        for reason in raw.skipped if self.classes is None else self.classes.update(raw):
            log.warning("skipped %s", reason)
        self._check_bad(final=False)
        if raw.images is None:
            return None
        stats.images += raw.labels.shape[0]
        x = raw.images.to(self.device, non_blocking=True)
        y = raw.labels.to(self.device, non_blocking=True)
        if self.mix is not None:
            x, y = self.mix.seeded(x, y, batch_seed(self.schedule.seed, self.schedule.epoch, step))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _check_bad(self, final: bool) -> None:
        stats = self.stats
        bad = len(stats.skipped)
        if bad and (final or stats.attempted >= MIN_CHECKED) and bad > MAX_BAD_FRACTION * stats.attempted:
            raise DataError(f"{self.name}: expected readable images, found {bad} of the {stats.attempted} read "
                            f"unreadable (first: {stats.skipped[0]})")


def make_loader(dataset: Dataset, *, workers: int, device: torch.device, prefetch: int, persistent: bool,
                **kwargs: Any) -> DataLoader:
    """A DataLoader of :class:`RawBatch` values: ``workers`` processes (0: this one) loading ``prefetch``
    batches each ahead, into pinned memory when ``device`` is CUDA; ``kwargs`` name the batching."""
    cuda = device.type == "cuda"
    # A generator of its own: DataLoader draws its workers' base seed from it at every epoch, which would
    # otherwise advance the global generator the trainer checkpoints. Nothing random depends on that seed.
    return DataLoader(dataset, num_workers=workers, collate_fn=collate_samples, pin_memory=cuda,
                      pin_memory_device=str(device) if cuda else "", persistent_workers=persistent and workers > 0,
                      prefetch_factor=prefetch if workers > 0 else None, generator=torch.Generator().manual_seed(0),
                      **kwargs)


def folder_loader(files: FileList, transform: Callable[[torch.Tensor], torch.Tensor], batch_size: int, *,
                  train: bool, seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 2,
                  device: torch.device | str = "cpu", channels_last: bool = False, mix: BatchMix | None = None,
                  prefetch: int = 2, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  keep_empty: bool = False, persistent: bool = True) -> StreamLoader:
    """A :class:`StreamLoader` over the files of ``files``, decoded by ``workers`` processes (capped at the
    cores, see :func:`resolve_workers`; 0: in this process) that persist across epochs (unless
    ``persistent`` is False: started for each pass) and load ``prefetch`` batches each ahead. See :class:`EpochBatches` for ``train``, ``seed``, ``rank`` and
    ``world_size``, :class:`StreamLoader` for ``keep_empty``; ``transform`` is an ``augment.TrainTransform``
    or ``augment.EvalTransform``."""
    batches = EpochBatches(len(files), batch_size, train=train, seed=seed, rank=rank, world_size=world_size)
    device = torch.device(device)
    loader = make_loader(ImageFileDataset(files, transform, max_pixels), workers=resolve_workers(workers),
                         device=device, prefetch=prefetch, persistent=persistent, batch_sampler=batches)
    return StreamLoader(loader, batches, device=device, channels_last=channels_last, mix=mix, name=str(files.root),
                        keep_empty=keep_empty, classes=UnreadableClasses(files))


def in_memory_bytes(n_images: int, size: tuple[int, int], channels: int = 3) -> int:
    """The bytes of ``n_images`` uint8 images of ``size`` (H, W) held in memory."""
    return n_images * channels * size[0] * size[1]


def _machine_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_pipeline(n_images: int, size: tuple[int, int], *, force: str | None = None, budget: int | None = None,
                    processes: int | None = None) -> str:
    """'memory' (decode everything once, the in-memory path) or 'stream' for ``n_images`` images trained
    at ``size`` (H, W): 'memory' when they fit ``budget`` bytes as uint8. ``budget`` None: the smaller of
    :data:`MEMORY_BUDGET` and a quarter of the machine's memory, divided among the ``processes`` on this
    machine (None: ``LOCAL_WORLD_SIZE`` as torchrun sets it, else 1), since each holds its own copy.
    ``force`` 'memory' or 'stream' overrides the choice."""
    if force is not None:
        if force not in PIPELINES:
            raise ConfigError(f"pipeline must be one of {', '.join(PIPELINES)}, got {force!r}")
        return force
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if budget is None:
        budget = min(MEMORY_BUDGET, _machine_memory() // 4) // max(processes, 1)
    return "memory" if in_memory_bytes(n_images, size) <= budget else "stream"


def _stop_workers(loader: DataLoader, batches: Iterator[Any]) -> None:
    """Shut down the worker processes behind ``batches`` after one of them died. DataLoader keeps its
    workers' pids registered with the SIGCHLD handler it installs until the iterator shuts down; left
    registered, the dead worker makes that handler raise again at the next child process that exits,
    anywhere in the program. torch has no public call for this (``_shutdown_workers`` is what the
    iterator's own ``__del__`` calls)."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if getattr(loader, "_iterator", None) is batches:
        loader._iterator = None
