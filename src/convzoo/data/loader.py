"""Batches of augmented, normalised images, made from whole uint8 batches with tensor operations.

Augmentation is the seed's: a random horizontal flip and a random shift of up to ``shift`` of the
size, the uncovered border filled with 0 (after normalisation, as Keras' ``ImageDataGenerator`` with
``fill_mode='constant'`` on normalised data). Everything is drawn from one seeded generator, so an
epoch is reproducible from ``(seed, epoch)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from numbers import Integral

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from .augment import BatchMix, batch_seed
from .dataset import ArrayDataset


def check_batch_size(ds: ArrayDataset | int, batch_size: int) -> None:
    """Raise unless ``batch_size`` is a positive int no larger than ``ds`` (a data set or its length)."""
    n = ds if isinstance(ds, Integral) else len(ds)
    _check_positive(batch_size)
    if batch_size > n:
        raise DataError(f"batch size {batch_size} is larger than the data set ({n} images)")


def _check_positive(batch_size: int) -> None:
    if not isinstance(batch_size, Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")


def random_flip_shift(x: torch.Tensor, gen: torch.Generator, flip: bool, shift: float) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 and shift it by up to ``shift`` of its size."""
    n, _, h, w = x.shape
    if flip:
        mask = torch.rand(n, generator=gen, device=gen.device) < 0.5
        x = torch.where(mask[:, None, None, None].to(x.device), x.flip(3), x)
    if shift > 0:
        ph, pw = int(round(h * shift)), int(round(w * shift))
        dy = torch.randint(-ph, ph + 1, (n,), generator=gen, device=gen.device).to(x.device)
        dx = torch.randint(-pw, pw + 1, (n,), generator=gen, device=gen.device).to(x.device)
        padded = F.pad(x, (pw, pw, ph, ph))
        rows = (torch.arange(h, device=x.device)[None, :] + ph - dy[:, None])
        cols = (torch.arange(w, device=x.device)[None, :] + pw - dx[:, None])
        idx_n = torch.arange(n, device=x.device)[:, None, None, None]
        idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
    return x


def random_cutout(x: torch.Tensor, gen: torch.Generator, size: int) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square (clipped at the border) at a random centre in each image
    (DeVries & Taylor, 2017); after normalisation 0 is the mean colour."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=gen, device=gen.device).to(x.device)
    cx = torch.randint(0, w, (n,), generator=gen, device=gen.device).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] - cy[:, None]).abs() <= size // 2
    cols = (torch.arange(w, device=x.device)[None, :] - cx[:, None]).abs() <= size // 2
    keep = ~(rows[:, :, None] & cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


class BatchLoader:
    """Iterates over an :class:`ArrayDataset` in batches of normalised float tensors.

    Normalisation: ``mean``/``std`` in 0-255 pixel units (``(x - mean) / std``), or ``normalize``, a function
    of the float pixels (N, C, H, W) such as ``augment.Normalize``. With ``train=True`` the order is
    shuffled and batches are augmented; the generator is re-seeded from ``(seed, epoch)`` at each
    :meth:`set_epoch`. ``mix`` (mixup/cutmix, training only) mixes each batch seeded by
    ``augment.batch_seed(seed, epoch, step)``, as the streaming loader does; labels become soft targets
    (N, classes). With ``drop_last`` a batch size larger than the data set, which would give no batch at
    all, raises :class:`DataError`.
    """

    def __init__(self, ds: ArrayDataset, batch_size: int, *, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 train: bool = False, flip: bool = True, shift: float = 0.125, seed: int = 0,
                 drop_last: bool = False, device: torch.device | str = "cpu",
                 channels_last: bool = False, cutout: int = 0, mix: BatchMix | None = None) -> None:
        if drop_last:
            check_batch_size(ds, batch_size)
        else:
            _check_positive(batch_size)
        if (normalize is None) == (mean is None or std is None):
            raise ConfigError("BatchLoader normalises with mean and std, or with normalize: give one of them")
        self.device = torch.device(device)
        self.images = ds.images.to(self.device)
        self.labels = ds.labels.to(self.device)
        self.batch_size, self.train, self.flip, self.shift = batch_size, train, flip, shift
        self.seed, self.drop_last, self.channels_last, self.cutout = seed, drop_last, channels_last, cutout
        self.normalize, self.mix = normalize, mix
        if normalize is None:
            self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
            self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the shuffling and augmentation of ``epoch``, and yield its batches from ``start_step`` on
        (the earlier ones are drawn and dropped, so that the later ones are those of the whole epoch)."""
        if not 0 <= start_step <= len(self):
            raise ConfigError(f"expected a start step in 0..{len(self)}, got {start_step!r}")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.images.shape[0]
        gen = torch.Generator(device=self.device).manual_seed((self.seed * 100003 + self.epoch) % 2 ** 64)
        order = torch.randperm(n, generator=gen, device=self.device) if self.train else None
        for b in range(len(self)):
            idx = slice(b * self.batch_size, min(n, (b + 1) * self.batch_size))
            if order is not None:
                idx = order[idx]
            x = self.images[idx].float()
            x = self.normalize(x) if self.normalize is not None else (x - self.mean) / self.std
            if self.train:
                x = random_flip_shift(x, gen, self.flip, self.shift)
                if self.cutout > 0:
                    x = random_cutout(x, gen, self.cutout)
            if b < self.start_step:
                continue
            y = self.labels[idx]
            if self.train and self.mix is not None:
                x, y = self.mix.seeded(x, y, batch_seed(self.seed, self.epoch, b))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
