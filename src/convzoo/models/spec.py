"""What a family module declares: its registered models (:class:`ModelCfg`), its published weight files
(:class:`WeightRecord`), how Keras files and other libraries' state dicts map onto its modules
(:class:`KerasMapping`, :class:`TorchMapping`), all held by one :class:`Family`.

The registry collects the families listed in :data:`convzoo.models.FAMILIES`; ``weights``, ``graph``,
``optimize`` and ``bench`` reach a family only through the registry, never by its name or type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..preprocess import CUSTOM, MODES, mode_stats

INTERPOLATIONS = ("bilinear", "bicubic")
LIBRARIES = ("keras", "timm", "torchvision")
_HASH_LENGTHS = {"md5": 32, "sha256": 64}


def _check_transform(what: str, preprocessing: str, interpolation: str, crop_pct: float,
                     modes: tuple[str, ...] = MODES) -> None:
    if preprocessing not in modes:
        raise ConfigError(f"{what}: preprocessing must be one of {', '.join(modes)}, got {preprocessing!r}")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"{what}: interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if not 0 < crop_pct <= 1:
        raise ConfigError(f"{what}: crop_pct must lie in (0, 1], got {crop_pct}")


@dataclass(frozen=True)
class ModelCfg(Mapping):
    """One registered model: what it expects (input size, preprocessing, resize and crop), where its first and
    last layers are, the builder arguments that make it, and the references it reproduces.

    Behaves as timm's ``pretrained_cfg`` mapping (``cfg["crop_pct"]``, ``cfg.get("mean")``, ``"std" in cfg``,
    iteration over the keys) and by attribute. ``preprocessing`` is Keras' mode name: ``'tf'`` (scale to
    [-1, 1]), ``'caffe'`` (BGR, ImageNet mean subtracted, no scaling), ``'torch'`` (ImageNet mean/std) or the
    seed's ``'cifar'``. ``min_input_size`` is the smallest (C, H, W) the model accepts (Keras' minimum for
    the ImageNet models; the model checks it). ``keras_app``, ``timm_name`` and ``torchvision_name`` name the
    same network in those libraries (``bench`` runs beside them); ``exact`` lists the libraries among
    :data:`LIBRARIES` whose network this model reproduces exactly, conventions included (same parameters,
    same outputs on the same weights): those the parity and count tests and ``verify-import`` compare with.
    ``aux_classifier``: the classifier of an optional auxiliary head
    (Inception's ``AuxLogits.fc``), whose parent module is the head. ``family`` and ``builder`` are filled in
    by the :class:`Family` that lists the model.
    """

    name: str
    reference: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    min_input_size: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 1000
    preprocessing: str = "torch"
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    first_conv: str = ""
    classifier: str = "fc"
    aux_classifier: str = ""
    drop_rate: float = 0.0
    fixed_input_size: bool = False
    keras_app: str | None = None
    timm_name: str | None = None
    torchvision_name: str | None = None
    exact: tuple[str, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    builder: Callable[..., nn.Module] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_transform(self.name, self.preprocessing, self.interpolation, self.crop_pct)
        unnamed = [lib for lib in self.exact if lib not in LIBRARIES or self.reference_name(lib) is None]
        if unnamed:
            raise ConfigError(f"{self.name}: exact names {', '.join(unnamed)} without a reference of that library")

    def reference_name(self, library: str) -> str | None:
        """The name of this network in ``library`` ('keras', 'timm' or 'torchvision'), or None."""
        return {"keras": self.keras_app, "timm": self.timm_name, "torchvision": self.torchvision_name}[library]

    def exact_reference(self, library: str) -> str | None:
        """The reference of ``library`` this model reproduces exactly, or None."""
        return self.reference_name(library) if library in self.exact else None

    @property
    def mean(self) -> tuple[float, ...]:
        """The per-channel mean the preprocessing subtracts, in 0–1 pixel units as timm gives it, in the channel
        order the model takes (BGR for ``'caffe'``)."""
        return tuple(v / 255 for v in mode_stats(self.preprocessing)[0])

    @property
    def std(self) -> tuple[float, ...]:
        """The per-channel divisor of the preprocessing, in 0–1 pixel units, in the model's channel order."""
        return tuple(v / 255 for v in mode_stats(self.preprocessing)[1])

    @cached_property
    def pool_size(self) -> tuple[int, int]:
        """(H, W) of the final feature map at ``input_size``, found by running the builder on the meta device."""
        if self.builder is None:
            raise ConfigError(f"{self.name}: pool_size needs the model's builder (a cfg from the registry)")
        with torch.device("meta"):
            model = self.builder(num_classes=0, in_chans=self.input_size[0], global_pool="", **self.kwargs).eval()
            out = model.forward_features(torch.empty(1, *self.input_size))
        return tuple(out.shape[-2:])

    def _keys(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "builder"] + ["mean", "std", "pool_size"]

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def as_dict(self) -> dict[str, Any]:
        """Every key and its value, as a plain dict."""
        return dict(self.items())


@dataclass(frozen=True)
class WeightRecord:
    """One weight file: where it is published, its hash and size, the evaluation transform its publisher uses,
    its classes and accuracy, and the test that verified convzoo's import.

    ``hash`` is ``'md5:HEX'`` (keras-applications checks MD5) or ``'sha256:HEX'`` (torchvision names its files
    after a SHA-256 prefix, which ``torch.hub`` checks); HEX may be a prefix; None when unknown. ``size`` in
    bytes (None when unknown). ``input_size``, ``interpolation``, ``crop_pct``, ``preprocessing`` and
    ``mean``/``std`` (0..255 pixel units, in the channel order the model takes) describe the evaluation
    transform; ``preprocessing`` ``'custom'`` means ``mean``/``std`` themselves (RGB), as folded from a Keras
    model's Rescaling and Normalization layers. ``classes`` names the class list (None when unknown),
    ``top1`` the publisher's top-1 accuracy in percent with ``top1_source``, ``parity`` the test that verified the import. ``input_affine``: the
    per-channel (scale, shift) the publisher's model applies to its input before the first convolution
    (torchvision's Inception V3 ``transform_input``), folded into that convolution at import; a record with
    one must have a hash, so that the fold depends on the file's contents.
    """

    name: str
    model: str
    source: str
    url: str | None
    file_name: str | None
    hash: str | None
    size: int | None
    include_top: bool
    input_size: tuple[int, int, int]
    interpolation: str
    crop_pct: float
    preprocessing: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: str | None
    top1: float | None = None
    top1_source: str | None = None
    parity: str | None = None
    input_affine: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __post_init__(self) -> None:
        _check_transform(self.name, self.preprocessing, self.interpolation, self.crop_pct, (*MODES, CUSTOM))
        if len(self.mean) != 3 or len(self.std) != 3 or 0 in self.std:
            raise ConfigError(f"{self.name}: mean and std must hold 3 values, no std zero; got {self.mean}, "
                              f"{self.std}")
        if self.input_affine is not None and self.hash is None:
            raise ConfigError(f"{self.name}: a record with an input_affine needs a hash")

    @property
    def transform_input(self) -> bool:
        """Whether an input transform is folded into the first convolution at import."""
        return self.input_affine is not None

    @property
    def hash_kind(self) -> str | None:
        """``'md5'``, ``'sha256'``, ``'sha256 prefix (8 hex digits)'``, ... or None when no hash is known."""
        if self.hash is None:
            return None
        algorithm, _, digest = self.hash.partition(":")
        if len(digest) == _HASH_LENGTHS.get(algorithm):
            return algorithm
        return f"{algorithm} prefix ({len(digest)} hex digits)"

    def as_dict(self) -> dict[str, Any]:
        """The record as plain JSON values (tuples become lists)."""
        return {k: _to_lists(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WeightRecord":
        """The record :meth:`as_dict` wrote (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: _to_tuples(v) for k, v in data.items() if k in known})


def _to_lists(v: Any) -> Any:
    return [_to_lists(x) for x in v] if isinstance(v, (tuple, list)) else v


def _to_tuples(v: Any) -> Any:
    return tuple(_to_tuples(x) for x in v) if isinstance(v, (tuple, list)) else v


class Placement(NamedTuple):
    """A Keras layer (by name) placed on a convzoo module path; ``partner`` is a second Keras layer whose
    weights fold into the same module (keras-applications' ResNeXt ``_2_gconv``), else None."""

    layer: str
    path: str
    partner: str | None = None


@dataclass(frozen=True)
class KerasMapping:
    """How a family's Keras files map onto its modules, from layer names and weight shapes only.

    ``place(names, model)``: where each Keras layer with weights goes, as (placements, messages naming the
    layers that fit nowhere). ``block_outputs(names, model)``: Keras layers without weights whose output is
    a convzoo module's output (block sums, ``mixedN``), for layer-by-layer verification.
    ``guess(shapes)``: the registered model a file was written from, given each layer's weight shapes in
    file order, or None.
    """

    place: Callable[[Sequence[str], nn.Module], tuple[list[Placement], list[str]]]
    block_outputs: Callable[[Sequence[str], nn.Module], dict[str, str]]
    guess: Callable[[Mapping[str, Sequence[tuple[int, ...]]]], str | None]


@dataclass(frozen=True)
class KeyLayout:
    """One library's state-dict naming for a family (timm's ``checkpoint_filter_fn`` is the model):
    ``detect(keys)`` recognises it, ``rename(keys)`` maps each key to convzoo's."""

    name: str
    detect: Callable[[Sequence[str]], bool]
    rename: Callable[[Sequence[str]], dict[str, str]]


@dataclass(frozen=True)
class TorchMapping:
    """A family's torch state dicts: the other libraries' ``layouts`` and ``guess(layout, shapes)``, the
    registered model a state dict belongs to given its layout name and its tensor shapes under convzoo's
    keys, or None."""

    layouts: tuple[KeyLayout, ...]
    guess: Callable[[str, Mapping[str, tuple[int, ...]]], str | None]


@dataclass(frozen=True)
class Family:
    """Everything convzoo knows about one family: its ``builder`` (a ``ConvNet`` class), its registered
    ``models``, the published weight ``records`` of those models, and its Keras and torch mappings (None
    where the family has no such files). The family's name and builder are filled into its models."""

    name: str
    builder: type
    models: tuple[ModelCfg, ...]
    records: tuple[WeightRecord, ...] = ()
    keras: KerasMapping | None = None
    torch: TorchMapping | None = None

    def __post_init__(self) -> None:
        filled = tuple(replace(m, family=self.name, builder=self.builder) for m in self.models)
        object.__setattr__(self, "models", filled)
        names = {m.name for m in filled}
        stray = [r.name for r in self.records if r.model not in names]
        if stray:
            raise ConfigError(f"family {self.name}: records {', '.join(stray)} name no model of the family")
