"""Image folders as lists of files and labels, without opening an image: the ImageFolder layout (one
subfolder per class), class folders named by WordNet id mapped onto the 1,000 ImageNet classes, and the
original flat ImageNet validation folder with a labels file.

A :class:`FileList` keeps its paths in one numpy byte array, so that a list of a million files costs tens
of megabytes and DataLoader worker processes share it without copying (Python objects would be copied
page by page as their reference counts change).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..utils.fileio import read_text
from .images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

WNID = re.compile(r"^n\d{8}$")
# Names shown in one error message; the rest are counted.
SHOWN = 3


@dataclass(frozen=True)
class FileList:
    """Image files below ``root`` and their labels: ``names`` (N,) holds the paths relative to ``root``
    (``os.fsencode``), ``labels`` (N,) int64 indices into ``classes``, the model's class names (for
    ImageNet the 1,000 WordNet ids, of which a subset evaluation holds only some)."""

    root: Path
    names: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> Path:
        """The file of sample ``index``."""
        return self.root / os.fsdecode(self.names[index])

    def subset(self, index: Sequence[int] | np.ndarray | Any) -> "FileList":
        """The samples at ``index`` (integers, or an int64 tensor), in that order."""
        index = np.asarray(index, dtype=np.int64)
        return FileList(self.root, self.names[index], self.labels[index], self.classes)

    def present(self) -> list[str]:
        """The names of the classes that have at least one file, in label order."""
        return [self.classes[i] for i in np.unique(self.labels)]


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1,000 ImageNet classes in Keras' order (``imagenet_class_index.json``, bundled): (wnid, name)."""
    index = json.loads((resources.files("convzoo") / "resources" / "imagenet_class_index.json").read_text())
    return tuple((index[str(i)][0], index[str(i)][1]) for i in range(len(index)))


def imagenet_wnids() -> list[str]:
    """The WordNet ids of the 1,000 ImageNet classes, in label order."""
    return [wnid for wnid, _ in imagenet_classes()]


def few(names: Sequence[str]) -> str:
    """At most :data:`SHOWN` of ``names`` (each cut to 60 characters), and how many more there are."""
    shown = ", ".join(n if len(n) <= 60 else n[:57] + "..." for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def class_mismatch(expected: list[str], found: list[str]) -> str:
    """How the classes ``found`` differ from those ``expected``, in a few words: the counts and at most a
    few names each way (for one-line errors)."""
    extra = [c for c in found if c not in set(expected)]
    missing = [c for c in expected if c not in set(found)]
    parts = [f"expected {_classes_named(expected)}, found {len(found)} classes"]
    if extra:
        parts.append(f"{len(extra)} not among them ({few(extra)})")
    if missing:
        parts.append(f"{len(missing)} missing ({few(missing)})")
    if not extra and not missing:
        parts.append("the same names in another order")
    return "; ".join(parts)


def _classes_named(classes: list[str]) -> str:
    if classes == imagenet_wnids():
        return "the 1000 ImageNet classes (WordNet ids such as n01440764)"
    return f"the model's {len(classes)} classes ({few(classes)})"


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _image_files(folder: Path, root: Path) -> list[str]:
    """The image files below ``folder`` as paths relative to ``root``, hidden files and folders left out,
    in sorted path order."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if _visible(d)]
        rel = Path(parent).relative_to(root)
        found.extend((rel / f).as_posix() for f in files
                     if _visible(f) and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    return sorted(found, key=lambda p: p.split("/"))


def _as_array(names: list[str]) -> np.ndarray:
    return np.array([os.fsencode(n) for n in names], dtype=bytes) if names else np.empty(0, dtype="S1")


def scan_class_folders(root: str | Path, classes: list[str] | None = None, *, subset: bool = True) -> FileList:
    """The image files of an ImageFolder layout: one subfolder per class, images anywhere below it.

    Without ``classes`` the classes are the sorted subfolder names, labelled 0..k-1 (training on your own
    folders: every class folder must hold images, else that class could never be learnt). With ``classes``
    (a model's: :func:`imagenet_wnids` for ImageNet weights) each subfolder is labelled by its index there;
    a folder holding only some of them, or class folders without images among them, is a subset evaluation
    unless ``subset`` is False (a run's validation set: every class folder present and holding images).
    Raises :class:`DataError` for a missing or empty root, a subfolder that is not a class of ``classes``
    (naming at most three, with the counts), missing classes when ``subset`` is False, a class folder
    without image files where every class needs images, or no image file at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"expected an image folder at {root}, found {'a file' if root.exists() else 'nothing'}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p.name))
    if not folders:
        raise DataError(f"{root}: expected one subfolder per class, found none")
    every_class = classes is None or not subset  # every class folder must hold images
    if classes is None:
        classes = folders
    index = {name: i for i, name in enumerate(classes)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise DataError(f"{root}: expected class folders named as {_classes_named(classes)}, found {len(unknown)} "
                        f"of {len(folders)} folders that are not: {few(unknown)}")
    if not subset and len(folders) != len(classes):
        missing = [c for c in classes if c not in set(folders)]
        raise DataError(f"{root}: expected a folder for each of {_classes_named(classes)}, found {len(folders)}; "
                        f"missing {few(missing)}")
    names, labels, empty = [], [], []
    for folder in folders:
        files = _image_files(root / folder, root)
        if not files:
            empty.append(folder)
        names.extend(files)
        labels.extend([index[folder]] * len(files))
    kinds = ', '.join(sorted(IMAGE_EXTENSIONS))
    if empty and every_class:
        raise DataError(f"{root}: expected image files ({kinds}) in every class folder, found none in {len(empty)} of "
                        f"{len(folders)}: {few(empty)}")
    if not names:
        raise DataError(f"{root}: expected image files ({kinds}) in the class folders, found none in any of "
                        f"{len(folders)}")
    return FileList(root, _as_array(names), np.asarray(labels, dtype=np.int64), list(classes))


def _read_rows(labels_file: Path) -> list[list[str]]:
    what = "a CSV file of file name, label rows"
    try:
        rows = csv.reader(io.StringIO(read_text(labels_file, what), newline=""))
        return [row for row in rows if row and any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise DataError(f"{labels_file}: expected {what}, found a malformed row ({exc})") from None


def _label_of(text: str, index: dict[str, int], n: int) -> int | None:
    """The class index a label cell names: a class name, or an integer index into the classes. Only the
    first word counts (Kaggle's LOC_val_solution.csv puts boxes after the wnid)."""
    words = text.split()
    word = words[0] if words else ""
    if word in index:
        return index[word]
    if re.fullmatch(r"\d+", word) and int(word) < n:
        return int(word)
    return None


def _is_header(row: list[str], index: dict[str, int], n: int, by_name: dict[str, str]) -> bool:
    """A first row is a header when its file cell names no file and its label cell is neither a label nor
    shaped like a WordNet id or a number."""
    words = row[1].split()
    return (row[0].strip() not in by_name and _label_of(row[1], index, n) is None
            and not (words and (WNID.match(words[0]) or re.fullmatch(r"-?\d+", words[0]))))


def _files_by_name(root: Path) -> dict[str, str]:
    """Every image file below ``root`` by its relative path and, where unambiguous, by its stem."""
    files = _image_files(root, root)
    by_name = {f: f for f in files}
    stems: dict[str, list[str]] = {}
    for f in files:
        stems.setdefault(os.path.splitext(f)[0], []).append(f)
    for stem, found in stems.items():
        if len(found) == 1:
            by_name.setdefault(stem, found[0])
    return by_name


def scan_labels_file(root: str | Path, labels_file: str | Path, classes: list[str]) -> FileList:
    """The images of a flat folder labelled by a CSV file of ``file name, label`` rows (the original
    ImageNet validation layout): a label is a class name (a WordNet id for ImageNet) or an integer index
    into ``classes``; a header row is allowed; a file name may leave out its extension
    (``ILSVRC2012_val_00000001``). Files the labels file does not name are left out, with one warning.

    Raises :class:`DataError` naming the first few offending rows for rows that name missing files, labels
    that are not among ``classes``, files named twice, or rows with fewer than two cells.
    """
    root, labels_file = Path(root), Path(labels_file)
    if not root.is_dir():
        raise DataError(f"expected an image folder at {root}, found {'a file' if root.exists() else 'nothing'}")
    rows = _read_rows(labels_file)
    index = {name: i for i, name in enumerate(classes)}
    by_name = _files_by_name(root)
    if rows and len(rows[0]) >= 2 and _is_header(rows[0], index, len(classes), by_name):
        rows = rows[1:]
    if not rows:
        raise DataError(f"{labels_file}: expected rows of file name, label, found none")
    short = [str(n) for n, row in enumerate(rows, 1) if len(row) < 2]
    if short:
        raise DataError(f"{labels_file}: expected two cells (file name, label) per row, found fewer in "
                        f"{len(short)} rows (data rows {few(short)})")
    names, labels, missing, unknown, seen = [], [], [], [], set()
    for name, label_text, *_ in rows:
        name = name.strip()
        file = by_name.get(name)
        label = _label_of(label_text, index, len(classes))
        if file is None:
            missing.append(name)
        if label is None:
            unknown.append(f"{name} -> {label_text.strip()!r}")
        if file is None or label is None:
            continue
        if file in seen:
            raise DataError(f"{labels_file}: expected each file once, found {name} twice")
        seen.add(file)
        names.append(file)
        labels.append(label)
    if missing:
        raise DataError(f"{labels_file}: expected files in {root}, found {len(missing)} of {len(rows)} rows naming "
                        f"files that do not exist: {few(missing)}")
    if unknown:
        raise DataError(f"{labels_file}: expected labels among {_classes_named(classes)} or indices 0-"
                        f"{len(classes) - 1}, found {len(unknown)} rows that are not: {few(unknown)}")
    unlabelled = len(set(by_name.values())) - len(names)
    if unlabelled:
        log.warning("%s: %d image files in %s are not in the labels file; left out", labels_file, unlabelled, root)
    return FileList(root, _as_array(names), np.asarray(labels, dtype=np.int64), list(classes))


def labels_file_classes(root: str | Path, labels_file: str | Path) -> list[str]:
    """The classes a labels file of ``file name, label`` rows names, for training on a flat folder: with
    integer labels only, '0' up to the largest; otherwise the distinct labels (first word of the cell),
    sorted. A first row whose file cell names no file below ``root`` is a header. Raises
    :class:`DataError` for a file without rows."""
    rows = [row for row in _read_rows(Path(labels_file)) if len(row) >= 2]
    if rows and rows[0][0].strip() not in _files_by_name(Path(root)):
        rows = rows[1:]
    labels = sorted({(row[1].split() or [""])[0] for row in rows})
    if not labels:
        raise DataError(f"{labels_file}: expected rows of file name, label, found none")
    if all(re.fullmatch(r"\d+", label) for label in labels):
        return [str(i) for i in range(max(int(label) for label in labels) + 1)]
    return labels
