"""Per-image transforms of a streaming pipeline, from decoded uint8 pixels to a normalised model input.

Training: the standard ImageNet augmentation as data (:class:`TrainAugment`, timm's field names and
defaults, ``timm.data.transforms_factory.transforms_imagenet_train``), built from torchvision's
``transforms.v2``. Evaluation: :class:`EvalTransform`, the weights' own preprocessing record exactly as
:class:`~convzoo.data.transforms.ImageTransform` applies it for ``predict`` (same Pillow resize, same crop,
same normalisation), so that a streamed evaluation scores every image as the in-memory path does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from ..errors import ConfigError
from ..preprocess import Normalize
from .images import resize_cover_crop
from .transforms import ImageTransform

INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}
_AFFINE = v2.InterpolationMode.BILINEAR
RE_MODES = ("const", "pixel")
# timm's RandAugment magnitudes run from 0 to 10 (auto_augment._LEVEL_DENOM); torchvision's take one of
# num_magnitude_bins steps from 0 to the op's maximum. 31 bins put timm's M at bin 3 * M.
_TIMM_LEVELS = 10
_BINS = 31
_RAND = re.compile(r"^(m|n|mstd)(\d+(?:\.\d+)?)$")
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class TrainAugment:
    """The training augmentation of a streaming run; field names and defaults are timm's
    (``transforms_imagenet_train`` and ``train.py``).

    ``scale`` (fraction of the image area) and ``ratio`` (width / height) bound the random-resized crop;
    ``hflip``/``vflip`` are flip probabilities. ``auto_augment``: None, 'rand-m{M}-n{N}-mstd{S}'
    (torchvision's RandAugment with N ops at timm's magnitude M of 10, M drawn per image from a normal of
    std S clipped to 0..10; defaults M=10, N=2, S=0), 'trivialaugment' (torchvision's TrivialAugmentWide)
    or 'original' (the AutoAugment ImageNet policy). ``color_jitter`` (brightness, contrast and saturation
    factor, as timm's scalar) applies only without ``auto_augment``, as in timm. ``re_prob``: probability
    of random erasing on the normalised image, ``re_mode`` 'const' (zeros, the mean colour) or 'pixel'
    (per-pixel normal noise). ``mixup``/``cutmix`` are the Beta alphas of the batch mixes (0: off);
    ``mixup_prob`` is the probability a batch is mixed at all and ``mixup_switch_prob`` that of CutMix
    when both are on. ``interpolation`` of the crop's resize: None takes the weights' own.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.4
    auto_augment: str | None = None
    interpolation: str | None = None
    re_prob: float = 0.0
    re_mode: str = "const"
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5

    def validate(self) -> "TrainAugment":
        """``self``, or :class:`ConfigError` naming the first invalid field."""
        for name in ("scale", "ratio"):
            low, high = getattr(self, name)
            if not 0 < low <= high or (name == "scale" and high > 1):
                raise ConfigError(f"{name} must be two increasing positive numbers"
                                  f"{' at most 1' if name == 'scale' else ''}, got {getattr(self, name)!r}")
        for name in ("hflip", "vflip", "re_prob", "mixup_prob", "mixup_switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        for name in ("color_jitter", "mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be at least 0, got {getattr(self, name)!r}")
        if self.re_mode not in RE_MODES:
            raise ConfigError(f"re_mode must be one of {', '.join(RE_MODES)}, got {self.re_mode!r}")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        auto_augment_transform(self.auto_augment, (0, 0, 0))
        return self


def mix_seed(*words: int) -> int:
    """A 64-bit seed mixed from non-negative integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of the augmentation of image ``index`` in ``epoch``."""
    return mix_seed(seed, epoch, 0, index)


def batch_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of the batch mix (mixup/cutmix) of global batch ``step`` in ``epoch``."""
    return mix_seed(seed, epoch, 1, step)


def seeded(transform: Callable[[T], R], image: T, seed: int | None) -> R:
    """``transform(image)`` with the global torch generator seeded by ``seed`` (None: as it is), the
    generator's state restored afterwards."""
    if seed is None:
        return transform(image)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return transform(image)


class _RandAugmentNoise(nn.Module):
    """torchvision's RandAugment whose magnitude is drawn per image from a normal around ``level`` (timm's
    'mstd'), clipped to timm's 0..10 range."""

    def __init__(self, ops: int, level: float, std: float, fill: tuple[int, ...]) -> None:
        super().__init__()
        self.level, self.std = level, std
        self.augment = v2.RandAugment(num_ops=ops, num_magnitude_bins=_BINS, interpolation=_AFFINE, fill=list(fill))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        level = min(max(self.level + self.std * float(torch.randn(())), 0.0), float(_TIMM_LEVELS))
        self.augment.magnitude = round(level * (_BINS - 1) / _TIMM_LEVELS)
        return self.augment(image)


def auto_augment_transform(spec: str | None, fill: tuple[int, ...]) -> nn.Module | None:
    """The transform an ``auto_augment`` value names (see :class:`TrainAugment`), filling uncovered pixels
    with ``fill`` (RGB, 0-255); None for None; :class:`ConfigError` for anything else. Rotations and shears
    resample bilinearly (torchvision's affine on tensors offers nearest or bilinear only)."""
    if spec is None:
        return None
    if spec == "trivialaugment":
        return v2.TrivialAugmentWide(interpolation=_AFFINE, fill=list(fill))
    if spec == "original":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=_AFFINE, fill=list(fill))
    parts = spec.split("-")
    values = {"m": float(_TIMM_LEVELS), "n": 2.0, "mstd": 0.0}
    for part in parts[1:]:
        match = _RAND.match(part)
        if parts[0] != "rand" or match is None:
            break
        values[match[1]] = float(match[2])
    else:
        if parts[0] == "rand" and values["m"] <= _TIMM_LEVELS and values["n"] == int(values["n"]):
            return _RandAugmentNoise(int(values["n"]), values["m"], values["mstd"], fill)
    raise ConfigError(f"auto_augment must be None, 'trivialaugment', 'original' or 'rand-m<0..10>-n<int>-mstd<float>' "
                      f"(sections optional), got {spec!r}")


def as_normalize(normalize: str | Normalize) -> Normalize:
    """A :class:`Normalize` for a preprocessing mode name or a :class:`Normalize` itself."""
    return normalize if isinstance(normalize, Normalize) else Normalize(mode=normalize)


class TrainTransform:
    """One training image: random-resized crop to ``size`` (H, W), flips, auto-augment or colour jitter on
    the uint8 pixels (3, H, W); then normalisation (a preprocessing mode name or a :class:`Normalize`) and
    random erasing. Uses the global torch generator, which the data set seeds per image."""

    def __init__(self, augment: TrainAugment, size: tuple[int, int], interpolation: str,
                 normalize: str | Normalize) -> None:
        augment = augment.validate()
        interpolation = augment.interpolation or interpolation
        self.normalize = as_normalize(normalize)
        fill = self.normalize.fill()
        steps: list[nn.Module] = [v2.RandomResizedCrop(size, scale=augment.scale, ratio=augment.ratio,
                                                       interpolation=INTERPOLATIONS[interpolation], antialias=True)]
        if augment.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(augment.hflip))
        if augment.vflip > 0:
            steps.append(v2.RandomVerticalFlip(augment.vflip))
        auto = auto_augment_transform(augment.auto_augment, fill)
        if auto is not None:
            steps.append(auto)
        elif augment.color_jitter > 0:
            steps.append(v2.ColorJitter(*(augment.color_jitter,) * 3))
        self.pixels = v2.Compose(steps)
        self.erase = (v2.RandomErasing(augment.re_prob, value=0 if augment.re_mode == "const" else "random")
                      if augment.re_prob > 0 else None)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """The model input (3, H, W) float32 of a decoded uint8 image (3, h, w)."""
        x = self.normalize(self.pixels(image))
        return self.erase(x) if self.erase is not None else x


class EvalTransform:
    """One evaluation image exactly as :class:`ImageTransform` prepares it for ``predict``: the shorter side
    resized to ``size / crop_pct`` with the record's interpolation (Pillow, antialiased), the centre
    ``size`` cropped, normalised as the transform's record says, or with ``normalize`` when given (an
    override). Deterministic."""

    def __init__(self, transform: ImageTransform, normalize: Normalize | None = None) -> None:
        self.transform = transform
        self.normalize = normalize if normalize is not None else transform.normalizer

    @classmethod
    def from_model(cls, model: Any, mode: str | None = None) -> "EvalTransform":
        """The evaluation transform of ``model``'s weights (see :meth:`ImageTransform.from_model`)."""
        return cls(ImageTransform.from_model(model, mode))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """The model input (3, H, W) float32 of a decoded uint8 image (3, h, w)."""
        t = self.transform
        h, w = t.size
        # As ImageTransform.pixels; the small slack keeps a fraction like 299 / 342 from flooring to 341.
        outer = (math.floor(h / t.crop_pct + 1e-6), math.floor(w / t.crop_pct + 1e-6))
        im = resize_cover_crop(Image.fromarray(image.permute(1, 2, 0).numpy()), outer, t.interpolation)
        top, left = (outer[0] - h) // 2, (outer[1] - w) // 2
        pixels = np.asarray(im, dtype=np.uint8)[top:top + h, left:left + w]
        return self.normalize(torch.from_numpy(pixels.copy()).permute(2, 0, 1))


class BatchMix:
    """MixUp / CutMix on a batch (torchvision's), as timm's ``Mixup`` chooses between them: a batch is mixed
    with probability ``mixup_prob``, by CutMix with probability ``mixup_switch_prob`` when both are on.
    Turns labels (N,) into soft targets (N, num_classes)."""

    def __init__(self, augment: TrainAugment, num_classes: int) -> None:
        augment = augment.validate()
        if augment.mixup <= 0 and augment.cutmix <= 0:
            raise ConfigError("BatchMix needs mixup or cutmix above 0")
        mixes, weights = [], []
        if augment.mixup > 0:
            mixes.append(v2.MixUp(alpha=augment.mixup, num_classes=num_classes))
            weights.append(1 - augment.mixup_switch_prob if augment.cutmix > 0 else 1.0)
        if augment.cutmix > 0:
            mixes.append(v2.CutMix(alpha=augment.cutmix, num_classes=num_classes))
            weights.append(augment.mixup_switch_prob if augment.mixup > 0 else 1.0)
        self.num_classes = num_classes
        self.prob = augment.mixup_prob
        self.mix = v2.RandomChoice(mixes, p=weights)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (N, C, H, W) and labels (N,) mixed, with soft targets (N, num_classes) float."""
        if float(torch.rand(())) >= self.prob:
            return x, nn.functional.one_hot(y, self.num_classes).to(x.dtype)
        return self.mix(x, y)

    def seeded(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``self(x, y)`` with the global torch generator seeded by ``seed`` (see :func:`batch_seed`) and left
        as it was."""
        return seeded(lambda batch: self(*batch), (x, y), seed)


def batch_mix(augment: TrainAugment, num_classes: int) -> BatchMix | None:
    """The batch mix of ``augment``, or None when neither mixup nor cutmix is on."""
    return BatchMix(augment, num_classes) if augment.mixup > 0 or augment.cutmix > 0 else None
