"""``weights='imagenet'``: the published files for each architecture, cached in ``$CONVZOO_HOME/weights``
(default ``~/.cache/convzoo/weights``), downloaded with urllib when absent and checked against their hash.

Hashes: Keras' files carry the MD5 keras-applications checks; torchvision's carry the SHA-256 prefix in
their names (what ``torch.hub`` checks); where no hash is known the file is used unchecked, with a warning.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import ChecksumError, DownloadError, WeightsError

KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
TORCHVISION_BASE = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class PretrainedFile:
    """One published weight file: where it is, what to call it in the cache, its hash (``'md5:HEX'`` or
    ``'sha256:HEX'``, HEX possibly a prefix; None when unknown), whether it holds the classifier, which
    project published it, and the preprocessing it expects when that differs from the model's default."""

    url: str
    file_name: str
    hash: str | None
    include_top: bool = True
    source: str = "keras"
    preprocessing: str | None = None


def _keras(folder: str, stem: str, top_md5: str, notop_md5: str) -> tuple[PretrainedFile, PretrainedFile]:
    top = f"{stem}_weights_tf_dim_ordering_tf_kernels.h5"
    notop = f"{stem}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return (PretrainedFile(f"{KERAS_BASE}{folder}/{top}", top, f"md5:{top_md5}"),
            PretrainedFile(f"{KERAS_BASE}{folder}/{notop}", notop, f"md5:{notop_md5}", include_top=False))


def _torchvision(file_name: str, **kwargs: str) -> PretrainedFile:
    prefix = file_name.rsplit("-", 1)[1].split(".")[0]
    return PretrainedFile(f"{TORCHVISION_BASE}{file_name}", file_name, f"sha256:{prefix}", source="torchvision",
                          **kwargs)


# The first file of a model's list that fits is the default; ``'imagenet:SOURCE'`` picks by source.
PRETRAINED: dict[str, tuple[PretrainedFile, ...]] = {
    "xception": _keras("xception", "xception", "0a58e3b7378bc2990ea3b43d5981f1f6",
                       "b0042744bf5b25fce3cb969f33bebb97"),
    "xception_timm": (PretrainedFile(
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/xception-43020ad28.pth",
        "xception-43020ad28.pth", None, source="timm"),),
    "inception_v3_keras": _keras("inception_v3", "inception_v3", "9a0d58056eeedaa3f26cb7ebd46da564",
                                 "bcbd6486424b2319ff4ef7d526e38f63"),
    # torchvision's Inception V3 was trained on inputs scaled to [-1, 1] (its transform_input undoes the
    # ImageNet normalisation), which is Keras' 'tf' preprocessing.
    "inception_v3": (_torchvision("inception_v3_google-0cc3c7bd.pth", preprocessing="tf"),),
    "resnet50": _keras("resnet", "resnet50", "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": _keras("resnet", "resnet101", "f1aeb4b969a6efcfb50fad2f0c20cfc5",
                        "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": _keras("resnet", "resnet152", "100835be76be38e30d865e96f2aaae62",
                        "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50v2": _keras("resnet", "resnet50v2", "3ef43a0b657b3be2300d5770ece849e0",
                         "fac2f116257151a9d068a22e544a4917"),
    "resnet101v2": _keras("resnet", "resnet101v2", "6343647c601c52e1368623803854d971",
                          "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152v2": _keras("resnet", "resnet152v2", "a49b44d1979771252814e80f8ec446f9",
                          "ed17cf2e0169df9d443503ef94b23b33"),
    "resnext50_32x4d": (_torchvision("resnext50_32x4d-7cdf4587.pth"),
                        *_keras("resnet", "resnext50", "67a5b30d522ed92f75a1f16eef299d1a",
                                "62527c363bdd9ec598bed41947b379fc")),
    "resnext101_32x4d": _keras("resnet", "resnext101", "34fb605428fcc7aa4d62f44404c11509",
                               "0f678c91647380debd923963594981b3"),
    "resnext101_32x8d": (_torchvision("resnext101_32x8d-8ba56ff5.pth"),),
}


def cache_dir() -> Path:
    """Where downloaded weights live: ``$CONVZOO_HOME/weights`` (``~/.cache/convzoo/weights`` by default)."""
    return Path(os.environ.get("CONVZOO_HOME") or "~/.cache/convzoo").expanduser() / "weights"


def select(name: str, spec: str = "imagenet", num_classes: int = 1000) -> PretrainedFile:
    """The file ``spec`` (``'imagenet'`` or ``'imagenet:SOURCE'``) means for model ``name``: the first
    listed from that source, preferring a file without classifier when ``num_classes`` is not 1000."""
    _, _, source = spec.partition(":")
    files = [f for f in PRETRAINED.get(name, ()) if not source or f.source == source]
    if not files:
        known = sorted({f.source for f in PRETRAINED.get(name, ())})
        hint = f"sources: {', '.join(known)}" if known else f"models with them: {', '.join(sorted(PRETRAINED))}"
        raise WeightsError(f"no published {spec!r} weights for {name} ({hint})")
    want_top = num_classes == 1000
    first = files[0]
    return next((f for f in files if f.include_top == want_top and f.source == first.source), first)


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str | None, name: str | None = None) -> None:
    """Raise :class:`ChecksumError` (naming the file ``name``, by default ``path``'s name) when ``path``'s
    digest does not start with ``expected`` (``'md5:HEX'`` or ``'sha256:HEX'``)."""
    if expected is None:
        return
    algorithm, _, hexdigest = expected.partition(":")
    actual = _digest(path, algorithm)
    if not actual.startswith(hexdigest.lower()):
        raise ChecksumError(f"{name or path.name}: {algorithm} is {actual}, expected {hexdigest}")


def download(entry: PretrainedFile, dest: Path) -> None:
    """Fetch ``entry.url`` into ``dest`` through a temporary file, verified before it takes ``dest``'s name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(entry.url, timeout=60) as response:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise DownloadError(f"could not download {entry.file_name} from {entry.url} ({reason}); "
                                    f"download it yourself and put it at {dest}") from None
            out.flush()
            os.fsync(out.fileno())
        try:
            verify(tmp, entry.hash, entry.file_name)
        except ChecksumError as exc:
            raise ChecksumError(f"{exc} (downloaded from {entry.url}; removed)") from None
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(entry: PretrainedFile) -> Path:
    """The cached file for ``entry``, downloaded first when absent; its hash is checked either way."""
    dest = cache_dir() / entry.file_name
    if dest.is_file():
        try:
            verify(dest, entry.hash)
        except ChecksumError as exc:
            raise ChecksumError(f"{exc} (cached at {dest}; delete it to download again)") from None
    else:
        download(entry, dest)
    if entry.hash is None:
        warnings.warn(f"{entry.file_name}: no published hash; used unchecked", stacklevel=3)
    return dest


def fetch_pretrained(model: nn.Module, spec: str = "imagenet") -> tuple[PretrainedFile, Path]:
    """The published file for ``model``'s architecture and its local path (see :func:`select`)."""
    cfg = getattr(model, "default_cfg", None)
    if cfg is None:
        raise WeightsError(f"{spec!r} weights need a model built by create_model (to know its architecture)")
    entry = select(cfg.name, spec, getattr(model, "num_classes", cfg.num_classes))
    return entry, fetch(entry)
