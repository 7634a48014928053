"""Weight records: what is known about each weight file, and what a model loaded from it expects.

A :class:`WeightRecord` names a file, where it is published, its hash (of the kind the publisher gives:
keras-applications checks MD5; torchvision names its files after a SHA-256 prefix, which ``torch.hub``
checks), its size when known, the input size, interpolation, crop fraction and preprocessing its publisher
evaluates with, its class list, the publisher's top-1 accuracy (None unless the publisher's documentation
states it) and the test that verified convzoo's import against the reference.

``load_weights`` attaches a record to every model it loads (``model.weights_meta``): the listed record for a
published file (found by its file name, then checked against its hash), else one built from the file and
the registered model (:func:`record_for_file`); convzoo checkpoints store it. Prediction and evaluation read
the preprocessing from it.

torchvision's Inception V3 weights expect ``transform_input=True`` (inputs normalised with the ImageNet mean
and std, which it maps back to [-1, 1]). convzoo folds that transform into the first convolution at import
(:mod:`.fold`), so the record says ``'torch'`` preprocessing, as torchvision's own transforms do.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..preprocess import mode_stats
from ..registry import ModelCfg

KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
TORCHVISION_BASE = "https://download.pytorch.org/models/"
TIMM_CADENE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/"
KERAS_TABLE = "keras.io/api/applications (table of available models)"
TORCHVISION_DOCS = "pytorch.org/vision/stable/models.html (acc@1 of the weights enum)"
IMAGENET_1K = "imagenet-1k"
_PARITY = "tests/test_parity.py::"
_HASH_LENGTHS = {"md5": 32, "sha256": 64}


@dataclass(frozen=True)
class WeightRecord:
    """One weight file.

    ``hash`` is ``'md5:HEX'`` or ``'sha256:HEX'`` (HEX possibly a prefix; None when unknown), ``size`` in
    bytes (None when unknown). ``input_size``, ``interpolation``, ``crop_pct``, ``preprocessing`` and
    ``mean``/``std`` (0..255 pixel units, in the channel order the model takes) describe the evaluation
    transform. ``classes`` names the class list (None when unknown), ``top1`` the publisher's top-1
    accuracy in percent with ``top1_source``, ``parity`` the test that verified the import.
    ``transform_input``: torchvision Inception V3 weights whose input transform is folded in at import.
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
    transform_input: bool = False

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
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WeightRecord":
        """The record :meth:`as_dict` wrote (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


def _record(name: str, model: str, source: str, url: str, *, file_hash: str | None, include_top: bool = True,
            input_size: int, interpolation: str, crop_pct: float, preprocessing: str, top1: float | None = None,
            top1_source: str | None = None, parity: str | None = None, transform_input: bool = False
            ) -> WeightRecord:
    mean, std, _ = mode_stats(preprocessing)
    return WeightRecord(name, model, source, url, url.rsplit("/", 1)[1], file_hash, None, include_top,
                        (3, input_size, input_size), interpolation, crop_pct, preprocessing, mean, std, IMAGENET_1K,
                        top1, top1_source if top1 is not None else None, parity, transform_input)


def _keras(model: str, folder: str, stem: str, top_md5: str, notop_md5: str, *, input_size: int = 224,
           interpolation: str = "bilinear", preprocessing: str, top1: float | None = None,
           parity: str | None = None) -> tuple[WeightRecord, WeightRecord]:
    """A keras-applications pair (with and without classifier). Keras publishes no resize/crop: the transform
    is convzoo's registered one for the model."""
    common = dict(input_size=input_size, interpolation=interpolation, crop_pct=0.875, preprocessing=preprocessing,
                  top1_source=KERAS_TABLE, parity=parity)
    base = f"{KERAS_BASE}{folder}/{stem}_weights_tf_dim_ordering_tf_kernels"
    return (_record(f"{model}.keras", model, "keras", f"{base}.h5", file_hash=f"md5:{top_md5}", top1=top1, **common),
            _record(f"{model}.keras_notop", model, "keras", f"{base}_notop.h5", file_hash=f"md5:{notop_md5}",
                    include_top=False, **common))


def _torchvision(model: str, file_name: str, **kwargs: Any) -> WeightRecord:
    prefix = file_name.rsplit("-", 1)[1].split(".")[0]
    return _record(f"{model}.torchvision", model, "torchvision", f"{TORCHVISION_BASE}{file_name}",
                   file_hash=f"sha256:{prefix}", top1_source=TORCHVISION_DOCS, **kwargs)


def _keras_parity(app: str) -> str:
    return f"{_PARITY}test_keras_parity[{app}-legacy_h5]"


# By registered model; the first record of a model's list that fits is what ``weights='imagenet'`` loads,
# ``'imagenet:SOURCE'`` picks by source.
RECORDS: dict[str, tuple[WeightRecord, ...]] = {
    "xception": _keras("xception", "xception", "xception", "0a58e3b7378bc2990ea3b43d5981f1f6",
                       "b0042744bf5b25fce3cb969f33bebb97", input_size=299, interpolation="bicubic",
                       preprocessing="tf", top1=79.0, parity=_keras_parity("Xception")),
    "xception_timm": (_record("xception_timm.timm", "xception_timm", "timm", f"{TIMM_CADENE}xception-43020ad28.pth",
                              file_hash=None, input_size=299, interpolation="bicubic", crop_pct=0.8975,
                              preprocessing="tf", parity=f"{_PARITY}test_torch_parity[timm-legacy_xception]"),),
    "inception_v3_keras": _keras("inception_v3_keras", "inception_v3", "inception_v3",
                                 "9a0d58056eeedaa3f26cb7ebd46da564", "bcbd6486424b2319ff4ef7d526e38f63",
                                 input_size=299, interpolation="bicubic", preprocessing="tf", top1=77.9,
                                 parity=_keras_parity("InceptionV3")),
    # torchvision evaluates at resize 342, centre crop 299, bilinear.
    "inception_v3": (_torchvision("inception_v3", "inception_v3_google-0cc3c7bd.pth", input_size=299,
                                  interpolation="bilinear", crop_pct=299 / 342, preprocessing="torch", top1=77.294,
                                  transform_input=True,
                                  parity=f"{_PARITY}test_torch_parity[torchvision-inception_v3], "
                                         "tests/test_records.py::test_transform_input_fold_matches_torchvision"),),
    "resnet50": _keras("resnet50", "resnet", "resnet50", "2cb95161c43110f7111970584f804107",
                       "4d473c1dd8becc155b73f8504c6f6626", preprocessing="caffe", top1=74.9,
                       parity=_keras_parity("ResNet50")),
    "resnet101": _keras("resnet101", "resnet", "resnet101", "f1aeb4b969a6efcfb50fad2f0c20cfc5",
                        "88cf7a10940856eca736dc7b7e228a21", preprocessing="caffe", top1=76.4),
    "resnet152": _keras("resnet152", "resnet", "resnet152", "100835be76be38e30d865e96f2aaae62",
                        "ee4c566cf9a93f14d82f913c2dc6dd0c", preprocessing="caffe", top1=76.6),
    "resnet50v2": _keras("resnet50v2", "resnet", "resnet50v2", "3ef43a0b657b3be2300d5770ece849e0",
                         "fac2f116257151a9d068a22e544a4917", preprocessing="tf", top1=76.0,
                         parity=_keras_parity("ResNet50V2")),
    "resnet101v2": _keras("resnet101v2", "resnet", "resnet101v2", "6343647c601c52e1368623803854d971",
                          "c0ed64b8031c3730f411d2eb4eea35b5", preprocessing="tf", top1=77.2),
    "resnet152v2": _keras("resnet152v2", "resnet", "resnet152v2", "a49b44d1979771252814e80f8ec446f9",
                          "ed17cf2e0169df9d443503ef94b23b33", preprocessing="tf", top1=78.0),
    "resnext50_32x4d": (_torchvision("resnext50_32x4d", "resnext50_32x4d-7cdf4587.pth", input_size=224,
                                     interpolation="bilinear", crop_pct=0.875, preprocessing="torch", top1=77.618,
                                     parity=f"{_PARITY}test_torch_parity[torchvision-resnext50_32x4d]"),
                        *_keras("resnext50_32x4d", "resnet", "resnext50", "67a5b30d522ed92f75a1f16eef299d1a",
                                "62527c363bdd9ec598bed41947b379fc", preprocessing="torch")),
    "resnext101_32x4d": _keras("resnext101_32x4d", "resnet", "resnext101", "34fb605428fcc7aa4d62f44404c11509",
                               "0f678c91647380debd923963594981b3", preprocessing="torch"),
    "resnext101_32x8d": (_torchvision("resnext101_32x8d", "resnext101_32x8d-8ba56ff5.pth", input_size=224,
                                      interpolation="bilinear", crop_pct=0.875, preprocessing="torch",
                                      top1=79.312),),
}


def list_records(model: str | None = None) -> list[WeightRecord]:
    """Every known record, or those of registered model ``model``."""
    return [r for name, records in RECORDS.items() if model in (None, name) for r in records]


def find_record(file_name: str) -> WeightRecord | None:
    """The record of the published file called ``file_name``, if any."""
    return next((r for r in list_records() if r.file_name == file_name), None)


def sha256_of(path: str | Path) -> str:
    """The SHA-256 hex digest of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_for_file(cfg: ModelCfg, path: str | Path, source: str, include_top: bool,
                    preprocessing: str | None = None) -> WeightRecord:
    """The record of a file no published record names: its name, SHA-256 and size, and the evaluation
    transform of the registered model ``cfg`` (for a model with a Keras layout that is its Keras
    application's preprocessing). ``source`` says what the file is (its format); ``preprocessing``
    overrides the mode (a convzoo checkpoint's saved one). Its classes, accuracy and parity are unknown."""
    path = Path(path)
    mode = preprocessing or cfg.preprocessing
    mean, std, _ = mode_stats(mode)
    return WeightRecord(f"{cfg.name}.{path.stem}", cfg.name, source, None, path.name, f"sha256:{sha256_of(path)}",
                        path.stat().st_size, include_top, tuple(cfg.input_size), cfg.interpolation, cfg.crop_pct,
                        mode, mean, std, None)
