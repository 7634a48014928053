"""CIFAR-10 and CIFAR-100 in their official formats, from a folder or straight from the official archive.

The python version holds pickled dicts (``data``: uint8 array (N, 3072), ``labels`` or
``fine_labels``/``coarse_labels``); the binary version holds records of label byte(s) followed by the
R, G and B planes of a 32x32 image: 1 + 3,072 bytes for CIFAR-10, 2 + 3,072 (coarse, fine) for CIFAR-100.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..errors import ChecksumError, ConfigError, DataError
from ..utils.fileio import check_file
from .dataset import ArrayDataset
from .safe import read_tar_members, safe_unpickle

PIXELS = 3 * 32 * 32
RECORD = 1 + PIXELS
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class CifarFormat:
    """One official CIFAR distribution: its archive, the folder inside it and the files of each split."""

    archive: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: tuple[str, ...]
    binary: bool
    cifar100: bool

    def files(self, split: str) -> tuple[str, ...]:
        """The batch files of ``split`` ('train' or 'test')."""
        return self.train if split == "train" else self.test


FORMATS = (
    CifarFormat("cifar-10-python.tar.gz", "cifar-10-batches-py",
                tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), ("batches.meta",),
                binary=False, cifar100=False),
    CifarFormat("cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), ("batches.meta.txt",),
                binary=True, cifar100=False),
    CifarFormat("cifar-100-python.tar.gz", "cifar-100-python", ("train",), ("test",), ("meta",),
                binary=False, cifar100=True),
    CifarFormat("cifar-100-binary.tar.gz", "cifar-100-binary", ("train.bin",), ("test.bin",),
                ("coarse_label_names.txt", "fine_label_names.txt"), binary=True, cifar100=True),
)

CIFAR_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8",
}

SPLITS = ("train", "test")
LABEL_KINDS = ("fine", "coarse")


def read_cifar_binary(files: list[Path], classes: list[str] | None = None) -> ArrayDataset:
    """Read CIFAR-10 binary batch files into one :class:`ArrayDataset`."""
    classes = list(classes or CIFAR10_CLASSES)
    parts = [_parse_binary(Path(f).read_bytes(), str(f), 1, 0, len(classes)) for f in files]
    return _concat(parts, classes)


def embedded_cifar10() -> ArrayDataset:
    """The 5,085 real CIFAR-10 training images shipped with convzoo (the first 1,017 of each batch)."""
    root = resources.files("convzoo") / "resources" / "cifar10-subset"
    meta = (root / "batches.meta.txt").read_text().split()
    with resources.as_file(root) as path:
        return read_cifar_binary([path / f"data_batch_{i}.bin" for i in range(1, 6)], meta)


def check_archive(path: Path, md5: str, advice: str = "delete it and download it again") -> None:
    """Raise :class:`ChecksumError` unless the MD5 of the archive at ``path`` is ``md5`` (hex); ``advice``
    ends the message."""
    try:
        check_file(path, f"md5:{md5}", name=str(path))
    except ChecksumError as exc:
        raise ChecksumError(f"{exc} (corrupt, partial or repacked; {advice})") from None


def detect_cifar_format(names: set[str], where: object) -> CifarFormat | None:
    """The CIFAR format whose file names appear in ``names`` (the files of one folder), or None."""
    matches = [f for f in FORMATS if names & set(f.train + f.test + f.meta)]
    if len(matches) > 1:
        raise DataError(f"{where}: expected the files of one CIFAR format, found files of "
                        f"{' and '.join(f.folder for f in matches)}")
    return matches[0] if matches else None


def find_cifar_folder(path: Path) -> Path | None:
    """``path`` if it holds CIFAR files, else the one official CIFAR folder inside it, else None."""
    if detect_cifar_format({p.name for p in path.iterdir() if p.is_file()}, path):
        return path
    inner = [path / f.folder for f in FORMATS if (path / f.folder).is_dir()]
    if len(inner) > 1:
        raise DataError(f"{path}: expected one CIFAR folder, found {', '.join(p.name for p in inner)}")
    return inner[0] if inner and find_cifar_folder(inner[0]) else None


def load_cifar(path: str | Path, split: str = "train", *, labels: str = "fine",
               md5s: Mapping[str, str] | None = None, verify_md5: bool = True) -> ArrayDataset:
    """Load ``split`` ('train' or 'test') of CIFAR-10 or CIFAR-100 from a folder of either official format or
    from an official ``.tar.gz`` (read in memory, nothing extracted).

    ``labels`` chooses the 'fine' (100 classes) or 'coarse' (20 classes) labels of CIFAR-100. An archive is
    checked against the MD5 in ``md5s`` (default :data:`CIFAR_MD5`) under its own name, or under the
    official name of the format it holds if it was renamed; ``verify_md5=False`` skips that check.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if labels not in LABEL_KINDS:
        raise ConfigError(f"labels must be one of {', '.join(LABEL_KINDS)}, got {labels!r}")
    path = Path(path)
    if path.is_file():
        return _load_archive(path, split, labels, CIFAR_MD5 if md5s is None else md5s, verify_md5)
    if not path.is_dir():
        raise DataError(f"expected a CIFAR folder or archive at {path}, found nothing")
    folder = find_cifar_folder(path)
    if folder is None:
        raise DataError(f"{path}: expected CIFAR files (e.g. data_batch_1, test_batch.bin, train, test.bin), "
                        f"found none")
    present = {p.name for p in folder.iterdir() if p.is_file()}
    fmt = detect_cifar_format(present, folder)
    return _build(fmt, present, lambda name: (folder / name).read_bytes(), split, labels, folder)


def _load_archive(archive: Path, split: str, labels: str, md5s: Mapping[str, str],
                  verify_md5: bool) -> ArrayDataset:
    wanted = {name for f in FORMATS for name in f.files(split) + f.meta}
    members = read_tar_members(archive, wanted)
    fmt = detect_cifar_format(set(members), archive)
    if fmt is None:
        raise DataError(f"{archive}: expected an official CIFAR archive, found no CIFAR {split} files in it")
    expected = md5s.get(archive.name) or md5s.get(fmt.archive)
    if verify_md5 and expected:
        check_archive(archive, expected, f"the official {fmt.archive} has that MD5; download it again, or "
                                         f"extract a repacked archive and pass its folder")
    return _build(fmt, set(members), members.__getitem__, split, labels, archive)


def _build(fmt: CifarFormat, present: set[str], read: Callable[[str], bytes], split: str, labels: str,
           where: Path) -> ArrayDataset:
    files = fmt.files(split)
    missing = [name for name in files if name not in present]
    if missing:
        raise DataError(f"{where}: expected {', '.join(files)} for split {split!r}, found "
                        f"{', '.join(sorted(present)) or 'nothing'} ({', '.join(missing)} missing)")
    classes = _classes(fmt, present, read, labels, where)
    if fmt.binary:
        label_bytes, label_at = (2, 0 if labels == "coarse" else 1) if fmt.cifar100 else (1, 0)
        parts = [_parse_binary(read(name), f"{where}/{name}", label_bytes, label_at, len(classes))
                 for name in files]
    else:
        key = f"{labels}_labels" if fmt.cifar100 else "labels"
        parts = [_parse_pickled(read(name), f"{where}/{name}", key, len(classes)) for name in files]
    return _concat(parts, classes)


def _classes(fmt: CifarFormat, present: set[str], read: Callable[[str], bytes], labels: str,
             where: Path) -> list[str]:
    meta = f"{labels}_label_names.txt" if fmt.cifar100 and fmt.binary else fmt.meta[0]
    if meta not in present:
        if not fmt.cifar100:
            return list(CIFAR10_CLASSES)
        raise DataError(f"{where}: expected the class names in {meta}, found no such file")
    source = f"{where}/{meta}"
    if fmt.binary:
        names = [line.strip() for line in read(meta).decode("utf-8", "replace").splitlines() if line.strip()]
    else:
        key = f"{labels}_label_names" if fmt.cifar100 else "label_names"
        names = _field(_as_dict(safe_unpickle(read(meta), source), source), key, source)
        if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
            raise DataError(f"{source}: expected {key} to be a list of strings, found {type(names).__name__}")
        names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
    expected = (20 if labels == "coarse" else 100) if fmt.cifar100 else 10
    if len(names) != expected:
        raise DataError(f"{source}: expected {expected} class names, found {len(names)}")
    return names


def _parse_binary(raw: bytes, source: str, label_bytes: int, label_at: int,
                  n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + PIXELS
    if len(raw) == 0 or len(raw) % record:
        raise DataError(f"{source}: expected a multiple of {record} bytes (CIFAR binary records), "
                        f"found {len(raw)} bytes")
    rec = np.frombuffer(raw, np.uint8).reshape(-1, record)
    return rec[:, label_bytes:].reshape(-1, 3, 32, 32), _check_labels(rec[:, label_at], source, n_classes)


def _parse_pickled(raw: bytes, source: str, key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _as_dict(safe_unpickle(raw, source), source)
    data = _field(batch, "data", source)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{source}: expected data to be a uint8 array (N, {PIXELS}), found {found}")
    try:
        labels = np.asarray(_field(batch, key, source), dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{source}: expected {key} to be a list of integers, found other values") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"{source}: expected {data.shape[0]} {key}, found shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), _check_labels(labels, source, n_classes)


def _as_dict(obj: object, source: str) -> dict[str, object]:
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(batch: dict[str, object], key: str, source: str) -> object:
    if key not in batch:
        raise DataError(f"{source}: expected a {key!r} entry, found {', '.join(sorted(batch)) or 'none'}")
    return batch[key]


def _check_labels(labels: np.ndarray, source: str, n_classes: int) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{source}: expected labels in [0, {n_classes}), found {int(labels.min())}.."
                        f"{int(labels.max())}")
    return labels.astype(np.int64)


def _concat(parts: list[tuple[np.ndarray, np.ndarray]], classes: list[str]) -> ArrayDataset:
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), classes)
