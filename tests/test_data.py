"""Data sources: CIFAR-10/100 in both official formats (folders and archives), safety of pickles and tar
archives, MD5 checks, downloads from a local server, image folders, splits and batch-size checks."""

from __future__ import annotations

import builtins
import hashlib
import http.server
import io
import logging
import os
import pickle
import socket
import struct
import subprocess
import tarfile
import threading
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convzoo.data import (ArrayDataset, BatchLoader, check_batch_size, download_cifar,
                          load_cifar, load_data, load_image_folder, load_train_val, resize_dataset,
                          embedded_cifar10, train_val_split)
from convzoo.data import download as download_module
from convzoo.errors import ChecksumError, ConfigError, DataError, DownloadError, UnsafeFileError

CLASSES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FINE = [f"fine{i}" for i in range(100)]
COARSE = [f"coarse{i}" for i in range(20)]
PER_BATCH = 3


class Py2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle wrote the official CIFAR files: protocol 2, strings as py2 ``str``
    (read back as bytes with ``encoding='bytes'``), numpy globals under ``numpy.core``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode() if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def py2_pickle(obj: object) -> bytes:
    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


def random_batch(rng: np.random.Generator, n: int, *label_ranges: int) -> tuple[np.ndarray, ...]:
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return (images, *(rng.integers(0, k, n) for k in label_ranges))


def write_cifar10(folder: Path, binary: bool, splits: tuple[str, ...] = ("train", "test"),
                  meta: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 files of either official format with PER_BATCH images per batch; the arrays per split."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    written = {}
    for split in splits:
        parts = []
        for name in names[split]:
            images, labels = random_batch(rng, PER_BATCH, 10)
            parts.append((images, labels))
            if binary:
                records = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(PER_BATCH, -1)], 1)
                (folder / f"{name}.bin").write_bytes(records.tobytes())
            else:
                batch = {b"batch_label": name.encode(), b"labels": labels.tolist(),
                         b"data": images.reshape(PER_BATCH, -1), b"filenames": [b"x.png"] * PER_BATCH}
                (folder / name).write_bytes(py2_pickle(batch))
        written[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    if meta and binary:
        (folder / "batches.meta.txt").write_text("\n".join(CLASSES10) + "\n\n")
    elif meta:
        (folder / "batches.meta").write_bytes(py2_pickle(
            {b"num_cases_per_batch": PER_BATCH, b"label_names": [c.encode() for c in CLASSES10],
             b"num_vis": 3072}))
    return written


def write_cifar100(folder: Path, binary: bool) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """CIFAR-100 files of either official format; the images, fine and coarse labels per split."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in ("train", "test"):
        images, fine, coarse = random_batch(rng, 2 * PER_BATCH, 100, 20)
        written[split] = (images, fine, coarse)
        if binary:
            labels = np.stack([coarse, fine], 1).astype(np.uint8)
            (folder / f"{split}.bin").write_bytes(np.concatenate([labels, images.reshape(len(fine), -1)], 1)
                                                  .tobytes())
        else:
            (folder / split).write_bytes(py2_pickle(
                {b"filenames": [b"x.png"] * len(fine), b"batch_label": split.encode(), b"fine_labels": fine.tolist(),
                 b"coarse_labels": coarse.tolist(), b"data": images.reshape(len(fine), -1)}))
    if binary:
        (folder / "fine_label_names.txt").write_text("\n".join(FINE) + "\n")
        (folder / "coarse_label_names.txt").write_text("\n".join(COARSE) + "\n")
    else:
        (folder / "meta").write_bytes(py2_pickle({b"fine_label_names": [n.encode() for n in FINE],
                                                  b"coarse_label_names": [n.encode() for n in COARSE]}))
    return written


def make_archive(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_dataset(ds: ArrayDataset, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
    assert ds.classes == classes


# --- CIFAR ---------------------------------------------------------------------------------------------

def test_embedded_subset_matches_raw_bytes() -> None:
    ds = load_data(None)
    root = resources.files("convzoo") / "resources" / "cifar10-subset"
    first = np.frombuffer((root / "data_batch_1.bin").read_bytes()[:3073], np.uint8)
    last = np.frombuffer((root / "data_batch_5.bin").read_bytes()[-3073:], np.uint8)
    assert len(ds) == 5085 and ds.images.shape == (5085, 3, 32, 32)
    assert ds.classes == CLASSES10
    assert ds.labels[0].item() == first[0]
    assert torch.equal(ds.images[0], torch.from_numpy(first[1:].reshape(3, 32, 32).copy()))
    assert ds.labels[-1].item() == last[0]
    assert torch.equal(ds.images[-1], torch.from_numpy(last[1:].reshape(3, 32, 32).copy()))
    with pytest.raises(DataError, match="training images only"):
        load_data(None, split="test")


@pytest.mark.parametrize("binary", [False, True], ids=["python", "binary"])
@pytest.mark.parametrize("from_archive", [False, True], ids=["folder", "archive"])
def test_cifar10_round_trip(tmp_path: Path, binary: bool, from_archive: bool) -> None:
    folder = tmp_path / ("cifar-10-batches-bin" if binary else "cifar-10-batches-py")
    written = write_cifar10(folder, binary)
    source: Path = folder
    md5s = None
    if from_archive:
        source = make_archive(folder, tmp_path / ("cifar-10-binary.tar.gz" if binary else "cifar-10-python.tar.gz"))
        md5s = {source.name: md5(source)}
    for split in ("train", "test"):
        ds = load_cifar(source, split, md5s=md5s)
        assert_dataset(ds, *written[split], CLASSES10)
    assert len(load_cifar(source, "train", md5s=md5s)) == 5 * PER_BATCH


@pytest.mark.parametrize("binary", [False, True], ids=["python", "binary"])
@pytest.mark.parametrize("from_archive", [False, True], ids=["folder", "archive"])
def test_cifar100_round_trip_fine_and_coarse(tmp_path: Path, binary: bool, from_archive: bool) -> None:
    folder = tmp_path / ("cifar-100-binary" if binary else "cifar-100-python")
    written = write_cifar100(folder, binary)
    source: Path = folder
    if from_archive:
        source = make_archive(folder, tmp_path / f"{folder.name}.tar.gz")
    for split in ("train", "test"):
        images, fine, coarse = written[split]
        assert_dataset(load_cifar(source, split, verify_md5=False), images, fine, FINE)
        assert_dataset(load_cifar(source, split, labels="coarse", verify_md5=False), images, coarse, COARSE)


def test_load_data_detects_cifar_folders_and_archives(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path / "extracted" / "cifar-10-batches-py", binary=False)
    assert_dataset(load_data(tmp_path / "extracted"), *written["train"], CLASSES10)
    archive = make_archive(tmp_path / "extracted" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    test = load_data(archive, split="test", md5s={archive.name: md5(archive)})
    assert_dataset(test, *written["test"], CLASSES10)
    resized = load_data(archive, split="test", input_size=(40, 48), md5s={archive.name: md5(archive)})
    assert resized.images.shape == (PER_BATCH, 3, 40, 48) and torch.equal(resized.labels, test.labels)
    assert_dataset(load_data("CIFAR-10", split="test", root=tmp_path / "extracted"), *written["test"], CLASSES10)


def test_test_only_folder_is_enough_for_the_test_split(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path / "test-only", binary=True, splits=("test",))
    assert_dataset(load_data(tmp_path / "test-only", split="test"), *written["test"], CLASSES10)
    with pytest.raises(DataError, match="data_batch_1.bin.*missing"):
        load_data(tmp_path / "test-only", split="train")


def test_cifar10_without_meta_uses_the_official_class_names(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "c", binary=False, splits=("test",), meta=False)
    assert load_cifar(tmp_path / "c", "test").classes == CLASSES10


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.write_bytes(f.read_bytes()[:-10]), "multiple of 3073 bytes"),
    (lambda f: f.write_bytes(b""), "found 0 bytes"),
    (lambda f: f.write_bytes(b"\x0c" + f.read_bytes()[1:]), r"labels in \[0, 10\)"),
], ids=["wrong-size", "empty", "bad-label"])
def test_damaged_binary_batches_raise(tmp_path: Path, damage, message: str) -> None:
    write_cifar10(tmp_path, binary=True, splits=("test",))
    damage(tmp_path / "test_batch.bin")
    with pytest.raises(DataError, match=message):
        load_cifar(tmp_path, "test")


def test_truncated_and_malformed_pickles_raise_data_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path, binary=False, splits=("test",))
    batch = tmp_path / "test_batch"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(DataError, match="expected a pickle"):
        load_cifar(tmp_path, "test")
    batch.write_bytes(py2_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"uint8 array \(N, 3072\)"):
        load_cifar(tmp_path, "test")
    batch.write_bytes(py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(DataError, match="expected 2 labels"):
        load_cifar(tmp_path, "test")


class Payload:
    """Pickles as a call of ``func(*args)``: what a crafted pickle runs when it is loaded."""

    def __init__(self, func: object, *args: object) -> None:
        self.call = (func, args)

    def __reduce__(self) -> tuple:
        return self.call


def payloads(marker: Path) -> dict[str, Payload]:
    return {
        "os.system": Payload(os.system, f"touch '{marker}'"),
        "builtins.eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess": Payload(subprocess.call, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("kind, refused", [("os.system", r"(posix|os)\.system"), ("builtins.eval", "builtins.eval"),
                                           ("subprocess", "subprocess.call")])
def test_crafted_pickle_is_refused_without_running(tmp_path: Path, kind: str, refused: str) -> None:
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps({b"data": payloads(proof)[kind]}))
    assert proof.exists(), "the payload must really run code when unpickled normally"
    marker = tmp_path / "marker"
    write_cifar10(tmp_path / "c", binary=False, splits=("test",))
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps({b"data": payloads(marker)[kind], b"labels": []}))
    with pytest.raises(UnsafeFileError, match=f"found a reference to {refused}"):
        load_cifar(tmp_path / "c", "test")
    assert not marker.exists()


def test_crafted_pickle_in_an_archive_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder, binary=False)
    (folder / "meta").write_bytes(pickle.dumps(payloads(marker)["os.system"]))
    archive = make_archive(folder, tmp_path / "cifar-100-python.tar.gz")
    with pytest.raises(UnsafeFileError, match="os.system|posix.system"):
        load_data(archive, md5s={archive.name: md5(archive)})
    assert not marker.exists()


def tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"evil") -> Path:
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        ok = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"hi"))
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return archive


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    return member


@pytest.mark.parametrize("member", [
    tar_member("../evil"),
    tar_member("cifar-10-batches-py/../../evil"),
    tar_member("/tmp/convzoo-evil"),
    tar_member("cifar-10-batches-py/data_batch_1", tarfile.SYMTYPE, "../../etc/passwd"),
    tar_member("cifar-10-batches-py/link", tarfile.SYMTYPE, "/etc/passwd"),
    tar_member("cifar-10-batches-py/hard", tarfile.LNKTYPE, "../outside"),
    tar_member("cifar-10-batches-py/dev", tarfile.CHRTYPE),
    tar_member("cifar-10-batches-py/fifo", tarfile.FIFOTYPE),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-dotdot", "symlink-absolute", "hardlink", "chardev", "fifo"])
def test_unsafe_tar_members_are_refused(tmp_path: Path, member: tarfile.TarInfo) -> None:
    archive = tar_with(tmp_path, member)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UnsafeFileError, match="expected members inside the archive's folder"):
        load_cifar(archive, verify_md5=False)
    assert sorted(tmp_path.rglob("*")) == before
    assert not Path("/tmp/convzoo-evil").exists()


def test_wrong_md5_raises_and_can_be_skipped_explicitly(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    written = write_cifar10(folder, binary=True, splits=("test",))
    archive = make_archive(folder, tmp_path / "cifar-10-binary.tar.gz")
    with pytest.raises(ChecksumError, match="expected md5 c32a1d4ab5d03f1284b67883e8d87530.*pass its folder"):
        load_cifar(archive, "test")
    assert_dataset(load_cifar(archive, "test", verify_md5=False), *written["test"], CLASSES10)
    renamed = archive.rename(tmp_path / "my-cifar.tgz")
    with pytest.raises(ChecksumError, match="cifar-10-binary.tar.gz"):
        load_data(renamed, split="test")


def test_missing_empty_and_unrecognised_sources_raise(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="found nothing"):
        load_data(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty folder"):
        load_data(tmp_path / "empty", input_size=(8, 8))
    with pytest.raises(DataError, match="found nothing"):
        load_cifar(tmp_path / "nowhere")
    with pytest.raises(DataError, match="expected CIFAR files"):
        load_cifar(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="tar"):
        load_data(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="pass download=True"):
        load_data("cifar100", root=tmp_path)
    with pytest.raises(ConfigError, match="split"):
        load_data(None, split="validation")


def test_resize_dataset_scales_covers_and_crops_the_centre() -> None:
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    images[0] = 200
    images[1, :, :, 8:24] = 255
    ds = resize_dataset(ArrayDataset(images, torch.tensor([0, 1]), ["a", "b"]), (48, 24), "bicubic")
    assert ds.images.shape == (2, 3, 48, 24) and ds.labels.tolist() == [0, 1]
    assert (ds.images[0] == 200).all()
    assert (ds.images[1, :, :, 2:22] == 255).all()


# --- splits and batches ---------------------------------------------------------------------------------

def test_seeded_split_is_deterministic_and_disjoint() -> None:
    ids = ArrayDataset(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), torch.arange(100), ["x"])
    train, val = train_val_split(ids, 0.2, seed=5)
    again_train, again_val = train_val_split(ids, 0.2, seed=5)
    assert torch.equal(val.labels, again_val.labels) and torch.equal(train.labels, again_train.labels)
    assert len(val) == 20 and not set(train.labels.tolist()) & set(val.labels.tolist())
    assert set(train.labels.tolist()) | set(val.labels.tolist()) == set(range(100))
    assert not torch.equal(train_val_split(ids, 0.2, seed=6)[1].labels, val.labels)
    train, val = load_train_val(None, val_fraction=0.1, seed=0)
    assert (len(train), len(val)) == (4577, 508)


def test_batch_size_larger_than_the_data_set_is_reported() -> None:
    ds = ArrayDataset(torch.zeros(5, 3, 4, 4, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64), ["a"])
    check_batch_size(ds, 5)
    with pytest.raises(DataError, match=r"batch size 8 is larger than the data set \(5 images\)"):
        check_batch_size(ds, 8)
    with pytest.raises(ConfigError, match="positive"):
        check_batch_size(ds, 0)
    with pytest.raises(DataError, match="batch size 8"):
        BatchLoader(ds, 8, mean=(0, 0, 0), std=(1, 1, 1), drop_last=True)
    assert len(BatchLoader(ds, 8, mean=(0, 0, 0), std=(1, 1, 1))) == 1


# --- downloads ------------------------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path: Path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / 'served'``; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def fake_archive(served: Path, tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    written = write_cifar10(tmp_path / "src" / "cifar-10-batches-py", binary=False)
    return make_archive(tmp_path / "src" / "cifar-10-batches-py", served / "cifar-10-python.tar.gz"), written


def test_download_verifies_md5_and_loads(tmp_path: Path, server, monkeypatch: pytest.MonkeyPatch) -> None:
    served, base = server
    archive, written = fake_archive(served, tmp_path)
    md5s = {archive.name: md5(archive)}
    path = download_cifar("cifar10", tmp_path / "root", base + archive.name, md5s=md5s)
    assert path == tmp_path / "root" / archive.name and path.read_bytes() == archive.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == [archive.name]
    monkeypatch.setattr(download_module, "BASE_URL", base)
    ds = load_data("cifar10", download=True, root=tmp_path / "other", md5s=md5s)
    assert_dataset(ds, *written["train"], CLASSES10)
    archive.unlink()
    assert download_cifar("cifar10", tmp_path / "root", base + "gone", md5s=md5s) == path


def test_download_with_wrong_hash_leaves_nothing(tmp_path: Path, server) -> None:
    served, base = server
    archive, _ = fake_archive(served, tmp_path)
    with pytest.raises(ChecksumError, match="expected md5 0{32}"):
        download_cifar("cifar-10-python.tar.gz", tmp_path / "root", base + archive.name,
                       md5s={archive.name: "0" * 32})
    assert list((tmp_path / "root").iterdir()) == []


def test_download_from_unreachable_url_says_where_to_put_the_file(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-100-binary.tar.gz"
    with pytest.raises(DownloadError) as info:
        download_cifar("cifar-100-binary.tar.gz", tmp_path, url)
    message = str(info.value)
    assert "cifar-100-binary.tar.gz" in message and url in message and "\n" not in message
    assert str(tmp_path / "cifar-100-binary.tar.gz") in message
    assert list(tmp_path.iterdir()) == []


# --- image folders --------------------------------------------------------------------------------------

def write_image_folder(root: Path, colours: dict[str, list[tuple[int, int, int]]]) -> None:
    for name, values in colours.items():
        (root / name).mkdir(parents=True)
        for i, colour in enumerate(values):
            Image.new("RGB", (24, 16), colour).save(root / name / f"{i}.png")


def test_image_folder_loads_sorted_classes_and_skips_corrupt_files(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    write_image_folder(tmp_path / "train", {"dog": [(0, 0, 255)], "cat": [(255, 0, 0), (0, 255, 0)]})
    (tmp_path / "train" / "cat" / "broken.jpg").write_text("not an image")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored: not an image extension")
    with caplog.at_level(logging.WARNING, logger="convzoo.data.imagefolder"):
        ds = load_data(tmp_path / "train", input_size=(8, 12))
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1]
    assert ds.images.shape == (3, 3, 8, 12)
    assert ds.images[0, :, 4, 6].tolist() == [255, 0, 0] and ds.images[2, :, 0, 0].tolist() == [0, 0, 255]
    assert len(ds.skipped) == 1 and "broken.jpg" in ds.skipped[0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "broken.jpg" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()


def test_image_folder_validation_split_and_folder(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", {"a": [(i, 0, 0) for i in range(5)], "b": [(0, i, 0) for i in range(5)]})
    write_image_folder(tmp_path / "val", {"a": [(9, 9, 9)], "b": [(8, 8, 8)]})
    write_image_folder(tmp_path / "other", {"a": [(9, 9, 9)], "c": [(8, 8, 8)]})
    train, val = load_train_val(tmp_path / "train", val_source=tmp_path / "val", input_size=(4, 4))
    assert (len(train), len(val)) == (10, 2) and val.classes == ["a", "b"]
    with pytest.raises(DataError, match=r"expected the classes of the training set \(a, b\), found a, c"):
        load_train_val(tmp_path / "train", val_source=tmp_path / "other", input_size=(4, 4))
    first = load_train_val(tmp_path / "train", val_fraction=0.3, seed=1, input_size=(4, 4))
    second = load_train_val(tmp_path / "train", val_fraction=0.3, seed=1, input_size=(4, 4))
    assert len(first[1]) == 3 and torch.equal(first[1].images, second[1].images)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="found nothing"):
        load_image_folder(tmp_path / "missing", (8, 8))
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match="one subfolder per class, found none"):
        load_image_folder(tmp_path / "flat", (8, 8))
    (tmp_path / "noimages" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="expected image files"):
        load_image_folder(tmp_path / "noimages", (8, 8))
    write_image_folder(tmp_path / "onebad", {"a": [(1, 2, 3)], "b": []})
    (tmp_path / "onebad" / "b" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="at least one readable image per class, found none in b"):
        load_image_folder(tmp_path / "onebad", (8, 8))
    with pytest.raises(ConfigError, match="input_size"):
        load_data(tmp_path / "onebad")


def test_cutout_zeroes_one_clipped_square_per_image_reproducibly():
    from convzoo.data.loader import random_cutout

    x = torch.ones(64, 3, 32, 32)
    a = random_cutout(x, torch.Generator().manual_seed(3), 8)
    b = random_cutout(x, torch.Generator().manual_seed(3), 8)
    assert torch.equal(a, b)
    zeros = (a[:, 0] == 0).sum((1, 2))
    assert zeros.max() == 9 * 9 and zeros.min() >= 5 * 5  # a 9x9 square, clipped at the border
    assert torch.equal(a[:, 0] == 0, a[:, 2] == 0)
    ds = embedded_cifar10().subset(torch.arange(128))
    loader = BatchLoader(ds, 64, mean=(0, 0, 0), std=(1, 1, 1), train=True, flip=False, shift=0.0, cutout=8)
    x, _ = next(iter(loader))
    assert ((x == 0).all(1).sum((1, 2)) >= 25).all()
