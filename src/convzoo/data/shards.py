"""Tar shards in the WebDataset format (``key.jpg`` + ``key.cls`` per sample), read through the
``webdataset`` library, for data on shared storage.

Every member of every shard is checked (:func:`convzoo.data.safe.check_member`: no absolute path, no
``..``, no device; and no link at all) and every label read before any image is. Training shuffles the
shards by ``(seed, epoch)``, deals them to the ranks and then to the loader processes, and shuffles the
samples of each process in a seeded buffer (``webdataset.filters.shuffle``); each loader process yields
the same number of batches, so all ranks take the same number of steps. Unlike an image folder, whose
order does not depend on the number of workers, the order here is a function of ``(seed, epoch, world
size, workers)``: a run resumed from the middle of an epoch must keep both.
"""

from __future__ import annotations

import glob
import random
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ConfigError, DataError, ImageError, UnsafeFileError
from .augment import BatchMix
from .images import DEFAULT_MAX_PIXELS
from .safe import check_member
from .streaming import Sample, StreamLoader, decode_bytes, make_loader, mix_seed, resolve_workers, seeded

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
LABEL_KEY = "cls"
SHUFFLE_BUFFER = 1000


@dataclass(frozen=True)
class ShardSet:
    """Checked tar shards: their paths, the number of samples in each, and the labels (int64) of all
    samples in shard order."""

    paths: tuple[Path, ...]
    counts: tuple[int, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return int(sum(self.counts))


def is_shard_source(source: str | Path | None) -> bool:
    """Whether a data source names tar shards: a ``.tar`` file, a glob (``shards/*.tar``) or a brace pattern
    (``train-{0000..0146}.tar``), several joined by ``::``."""
    return source is not None and str(source).endswith(".tar")


def expand_shards(spec: str | Sequence[str]) -> list[Path]:
    """The shard files a pattern or a list of paths names: brace patterns (``train-{0000..0146}.tar``, as
    webdataset's ``expand_urls``) and globs (``shards/*.tar``, sorted), ``::`` between patterns. Raises
    :class:`DataError` if none is named, a glob matches nothing, or a named shard is missing."""
    from webdataset.shardlists import expand_urls

    names: list[str] = []
    for part in (spec.split("::") if isinstance(spec, str) else [str(s) for s in spec]):
        if isinstance(spec, str) and glob.has_magic(part):
            found = sorted(glob.glob(part))
            if not found:
                raise DataError(f"expected tar shards matching {part}, found none")
            names.extend(found)
        else:
            names.extend(expand_urls(part) if isinstance(spec, str) else [part])
    if not names:
        raise DataError(f"expected tar shards, found an empty list in {spec!r}")
    missing = [n for n in names if not Path(n).is_file()]
    if missing:
        raise DataError(f"expected {len(names)} tar shards, found {len(missing)} missing: "
                        f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    return [Path(n) for n in names]


def _split_key(name: str) -> tuple[str | None, str | None]:
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


def _check_member(member: tarfile.TarInfo, path: Path) -> None:
    check_member(member, path)
    if not (member.isfile() or member.isdir()):
        raise UnsafeFileError(f"{path}: expected regular files, found the link or special file {member.name!r}")


def check_shard(path: str | Path, num_classes: int | None) -> list[int]:
    """The labels of the samples of the shard at ``path``, in order, after checking every member.

    Raises :class:`UnsafeFileError` for a member that is absolute, has a ``..`` component, or is a link or
    device, and :class:`DataError` for an unreadable tar, a sample without an image or a ``.cls`` label, or
    a label outside 0..num_classes-1 (None: any class index).
    """
    path = Path(path)
    samples: dict[str, dict[str, bytes | None]] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                _check_member(member, path)
                key, ext = _split_key(member.name)
                if not member.isfile() or key is None:
                    continue
                entry = samples.setdefault(key, {})
                entry[ext.lower()] = tar.extractfile(member).read() if ext.lower() == LABEL_KEY else None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: expected a readable tar shard, found a broken one ({type(exc).__name__}: {exc})") \
            from None
    labels = []
    for key, entry in samples.items():
        if LABEL_KEY not in entry or not any(k in entry for k in IMAGE_KEYS):
            raise DataError(f"{path}: expected {key}.cls and an image ({', '.join(IMAGE_KEYS)}) for each sample, "
                            f"found {', '.join(f'{key}.{e}' for e in sorted(entry))}")
        labels.append(_label(entry[LABEL_KEY], num_classes, f"{path}: {key}.cls"))
    return labels


def _label(data: bytes, num_classes: int | None, where: str) -> int:
    text = data.decode("utf-8", "replace").strip()
    if not text.isascii() or not text.isdigit() or (num_classes is not None and int(text) >= num_classes):
        bound = "" if num_classes is None else f" 0-{num_classes - 1}"
        raise DataError(f"{where}: expected a class index{bound}, found {text[:20]!r}")
    return int(text)


def open_shards(spec: str | Sequence[str], num_classes: int | None) -> ShardSet:
    """The shards ``spec`` names (see :func:`expand_shards`), each checked by :func:`check_shard` (labels
    below ``num_classes``; None: any class index)."""
    paths = expand_shards(spec)
    labels = [check_shard(p, num_classes) for p in paths]
    if not any(labels):
        raise DataError(f"expected samples in the {len(paths)} tar shards {spec!r}, found none")
    return ShardSet(tuple(paths), tuple(len(x) for x in labels), np.asarray(sum(labels, []), dtype=np.int64))


class ShardStream(IterableDataset):
    """The samples of a :class:`ShardSet` as :class:`Sample` values for a DataLoader of ``workers``
    processes (0 counts as one) in batches of ``batch_size`` per process.

    ``train``: shards dealt by ``(seed, epoch)`` (see the module), samples shuffled in a buffer of
    ``buffer``, augmentation seeded per sample; each process stops after its share of :attr:`steps`. Not
    ``train``: the shards of this rank (``paths[rank::world_size]``) in order, every sample once.
    """

    def __init__(self, shards: ShardSet, transform: Callable[[torch.Tensor], torch.Tensor], batch_size: int, *,
                 train: bool, seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 1,
                 buffer: int = SHUFFLE_BUFFER, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        if not 0 <= rank < world_size or batch_size < 1 or seed < 0:
            raise ConfigError(f"expected 0 <= rank < world size, batch size >= 1 and seed >= 0, got rank {rank}, "
                              f"world size {world_size}, batch size {batch_size}, seed {seed}")
        self.shards, self.transform, self.batch_size, self.train = shards, transform, batch_size, train
        self.seed, self.rank, self.world_size, self.workers = seed, rank, world_size, max(1, workers)
        self.buffer, self.max_pixels = buffer, max_pixels
        self.epoch, self.start_step = 0, 0
        if train and self._quota() == 0:
            raise DataError(f"{len(shards.paths)} tar shards do not give each of {world_size} x {self.workers} "
                            f"loader processes a batch of {batch_size}: use fewer workers or more, smaller shards")

    def _deal(self, rank: int) -> list[list[int]]:
        """The shard indices each loader process of ``rank`` reads this epoch."""
        n = len(self.shards.paths)
        if self.train:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=gen).tolist()
        else:
            order = list(range(n))
        mine = order[rank::self.world_size]
        return [mine[k::self.workers] for k in range(self.workers)]

    def _quota(self) -> int:
        """Batches each loader process yields in a training epoch: the fewest any process of any rank has."""
        return min(sum(self.shards.counts[i] for i in part) // self.batch_size
                   for rank in range(self.world_size) for part in self._deal(rank))

    @property
    def steps(self) -> int:
        """Batches of this rank in the epoch."""
        if self.train:
            return self._quota() * self.workers
        return sum(-(-sum(self.shards.counts[i] for i in part) // self.batch_size) for part in self._deal(self.rank))

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Read ``epoch`` from batch ``start_step`` on (training only; evaluation starts at 0)."""
        if epoch < 0 or not 0 <= start_step <= self.steps or (start_step and not self.train):
            raise ConfigError(f"expected epoch >= 0 and a start step in 0..{self.steps} (0 for evaluation), "
                              f"got {epoch}, {start_step}")
        self.epoch, self.start_step = epoch, start_step

    def _raw(self, shard_ids: list[int]) -> Iterator[dict]:
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        for i in shard_ids:
            path = self.shards.paths[i]
            try:
                with open(path, "rb") as f:
                    yield from group_by_keys({**item, "__url__": str(path)} for item in tar_file_iterator(f))
            except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError) as exc:
                raise DataError(f"{path}: expected a readable tar shard, found a broken one "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None

    def __iter__(self) -> Iterator[Sample]:
        from webdataset.filters import shuffle

        info = get_worker_info()
        worker = info.id if info is not None else 0
        role = (worker + self.start_step) % self.workers
        stream = self._raw(self._deal(self.rank)[role])
        if not self.train:
            yield from (self._sample(raw, None) for raw in stream)
            return
        stream = shuffle(self.buffer, rng=random.Random(mix_seed(self.seed, self.epoch, 2, self.rank, role)))(stream)
        done = max(0, -(-(self.start_step - role) // self.workers))
        end = self._quota() * self.batch_size
        for position, raw in enumerate(stream):
            if position >= end:
                return
            if position >= done * self.batch_size:
                yield self._sample(raw, mix_seed(self.seed, self.epoch, 3, self.rank, role, position))

    def _sample(self, raw: dict, seed: int | None) -> Sample:
        where = f"{raw['__url__']}: {raw['__key__']}"
        label = int(raw[LABEL_KEY])
        data = next(raw[k] for k in IMAGE_KEYS if k in raw)
        try:
            image = decode_bytes(data, where, self.max_pixels)
        except ImageError as exc:
            return Sample(None, label, str(exc), None)
        return Sample(seeded(self.transform, image, seed), label, None, None)


def shard_loader(shards: ShardSet, transform: Callable[[torch.Tensor], torch.Tensor], batch_size: int, *,
                 train: bool, seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 2,
                 device: torch.device | str = "cpu", channels_last: bool = False, mix: BatchMix | None = None,
                 prefetch: int = 2, buffer: int = SHUFFLE_BUFFER,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, keep_empty: bool = False) -> StreamLoader:
    """A :class:`StreamLoader` over tar shards; ``batch_size`` is the global batch when ``train`` (split
    evenly over the ranks), else each process's. Workers are started anew each epoch (the epoch travels
    with the data set)."""
    if train and batch_size % world_size:
        raise ConfigError(f"batch size {batch_size} does not split evenly over {world_size} processes")
    local = batch_size // world_size if train else batch_size
    workers = resolve_workers(workers)
    stream = ShardStream(shards, transform, local, train=train, seed=seed, rank=rank, world_size=world_size,
                         workers=workers, buffer=buffer, max_pixels=max_pixels)
    device = torch.device(device)
    loader = make_loader(stream, workers=workers, device=device, prefetch=prefetch, persistent=False,
                         batch_size=local, drop_last=False)
    return StreamLoader(loader, stream, device=device, channels_last=channels_last, mix=mix,
                        name=f"{len(shards.paths)} tar shards ({shards.paths[0]}, ...)", keep_empty=keep_empty)
