"""How the publishers name, place and describe their weight files, for the families' :class:`WeightRecord`\\ s:
keras-applications (a file with and one without classifier, MD5 given), torchvision (SHA-256 prefix in the
file name, evaluation transform and acc@1 in its weights enums) and timm's releases."""

from __future__ import annotations

from ..preprocess import mode_stats
from .spec import WeightRecord

KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
TORCHVISION_BASE = "https://download.pytorch.org/models/"
TIMM_CADENE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/"
KERAS_TABLE = "keras.io/api/applications (table of available models)"
TORCHVISION_DOCS = "pytorch.org/vision/stable/models.html (acc@1 of the weights enum)"
IMAGENET_1K = "imagenet-1k"
PARITY = "tests/test_parity.py::"


def record(name: str, model: str, source: str, url: str, *, file_hash: str | None, include_top: bool = True,
           input_size: int, interpolation: str, crop_pct: float, preprocessing: str, top1: float | None = None,
           top1_source: str | None = None, parity: str | None = None,
           input_affine: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> WeightRecord:
    """A record of an ImageNet-1k file published at ``url`` (its file name is the URL's last part), evaluated
    at ``input_size`` x ``input_size``; the mean and std follow from ``preprocessing``."""
    mean, std, _ = mode_stats(preprocessing)
    return WeightRecord(name, model, source, url, url.rsplit("/", 1)[1], file_hash, None, include_top,
                        (3, input_size, input_size), interpolation, crop_pct, preprocessing, mean, std, IMAGENET_1K,
                        top1, top1_source if top1 is not None else None, parity, input_affine)


def keras_pair(model: str, folder: str, stem: str, top_md5: str, notop_md5: str, *, input_size: int = 224,
               interpolation: str = "bilinear", preprocessing: str, top1: float | None = None,
               parity: str | None = None) -> tuple[WeightRecord, WeightRecord]:
    """A keras-applications pair (with and without classifier), ``{folder}/{stem}_weights_tf_dim_ordering_
    tf_kernels[_notop].h5``. Keras publishes no resize/crop: the transform is convzoo's registered one."""
    common = dict(input_size=input_size, interpolation=interpolation, crop_pct=0.875, preprocessing=preprocessing,
                  top1_source=KERAS_TABLE, parity=parity)
    base = f"{KERAS_BASE}{folder}/{stem}_weights_tf_dim_ordering_tf_kernels"
    return (record(f"{model}.keras", model, "keras", f"{base}.h5", file_hash=f"md5:{top_md5}", top1=top1, **common),
            record(f"{model}.keras_notop", model, "keras", f"{base}_notop.h5", file_hash=f"md5:{notop_md5}",
                   include_top=False, **common))


def torchvision_record(model: str, file_name: str, **kwargs) -> WeightRecord:
    """A torchvision file: its name ends in the first 8 hex digits of its SHA-256, which ``torch.hub`` checks."""
    prefix = file_name.rsplit("-", 1)[1].split(".")[0]
    return record(f"{model}.torchvision", model, "torchvision", f"{TORCHVISION_BASE}{file_name}",
                  file_hash=f"sha256:{prefix}", top1_source=TORCHVISION_DOCS, **kwargs)


def keras_parity(app: str) -> str:
    """The parity test of a keras-applications file."""
    return f"{PARITY}test_keras_parity[{app}-legacy_h5]"


def torch_parity(source: str, reference: str) -> str:
    """The parity test of a torchvision or timm file."""
    return f"{PARITY}test_torch_parity[{source}-{reference}]"
