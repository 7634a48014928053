"""WebDataset tar shards: checked members, labels, shard dealing over ranks and workers, mid-epoch resume."""

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from convzoo.data.augment import EvalTransform, TrainAugment, TrainTransform
from convzoo.data.shards import expand_shards, open_shards, shard_loader
from convzoo.data.streaming import decode_file
from convzoo.data.transforms import ImageTransform
from convzoo.errors import DataError, UnsafeFileError

SHARDS, PER_SHARD, CLASSES = 4, 9, 3


def _jpeg_bytes(seed, size=(30, 40)):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _add(tar, name, data, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _label(s, i):
    return (s * PER_SHARD + i) % CLASSES


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    for s in range(SHARDS):
        with tarfile.open(root / f"train-{s:04d}.tar", "w") as tar:
            for i in range(PER_SHARD):
                key = f"s{s}/img{i:03d}"
                _add(tar, f"{key}.jpg", _jpeg_bytes(100 * s + i))
                _add(tar, f"{key}.cls", str(_label(s, i)).encode())
    return root


def _epoch(loader, epoch, start=0):
    loader.set_epoch(epoch, start)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_brace_pattern_and_labels(shard_dir):
    shards = open_shards(str(shard_dir / "train-{0000..0003}.tar"), CLASSES)
    assert [p.name for p in shards.paths] == [f"train-{s:04d}.tar" for s in range(SHARDS)]
    assert shards.counts == (PER_SHARD,) * SHARDS
    assert shards.labels.tolist() == [_label(s, i) for s in range(SHARDS) for i in range(PER_SHARD)]
    with pytest.raises(DataError, match=r"found 1 missing: .*train-0004.tar"):
        expand_shards(str(shard_dir / "train-{0000..0004}.tar"))


def test_evaluation_reads_every_sample_once_with_predicts_pixels(shard_dir):
    shards = open_shards(sorted(str(p) for p in shard_dir.glob("*.tar")), CLASSES)
    transform = ImageTransform((24, 24), 0.875, "bicubic", "torch")
    loader = shard_loader(shards, EvalTransform(transform), 5, train=False, workers=2)
    batches = _epoch(loader, 0)
    assert len(batches) == len(loader)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert len(y) == SHARDS * PER_SHARD and sorted(y.tolist()) == sorted(shards.labels.tolist())
    first = shard_dir / "first.jpg"
    first.write_bytes(_jpeg_bytes(0))
    expected = transform([first])[0]
    assert any(torch.equal(row, expected) for row in x)
    assert torch.equal(EvalTransform(transform)(decode_file(first)), expected)


def test_training_ranks_read_disjoint_shards(shard_dir):
    shards = open_shards(sorted(str(p) for p in shard_dir.glob("*.tar")), CLASSES)
    transform = TrainTransform(TrainAugment(), (16, 16), "bilinear", "torch")
    seen = []
    for rank in range(2):
        loader = shard_loader(shards, transform, 6, train=True, seed=2, rank=rank, world_size=2, workers=1)
        loader.set_epoch(1)
        stream = loader.schedule
        seen.append({i for part in stream._deal(rank) for i in part})
        assert len(_epoch(loader, 1)) == len(loader) == 2 * PER_SHARD // 3
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(SHARDS))


def test_mid_epoch_start_equals_the_uninterrupted_epoch(shard_dir):
    shards = open_shards(sorted(str(p) for p in shard_dir.glob("*.tar")), CLASSES)
    transform = TrainTransform(TrainAugment(auto_augment="rand-m9-mstd0.5"), (16, 16), "bilinear", "torch")
    whole = _epoch(shard_loader(shards, transform, 4, train=True, seed=3, workers=2, buffer=10), 2)
    assert len(whole) == 2 * (2 * PER_SHARD // 4)
    for start in (3, 4):
        tail = _epoch(shard_loader(shards, transform, 4, train=True, seed=3, workers=2, buffer=10), 2, start)
        assert len(tail) == len(whole) - start
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[start:], tail))


@pytest.mark.parametrize("name, kind, link", [("../evil.jpg", tarfile.REGTYPE, ""),
                                              ("/etc/evil.jpg", tarfile.REGTYPE, ""),
                                              ("s/ok.jpg", tarfile.SYMTYPE, "other.jpg")])
def test_unsafe_members_are_refused_before_reading(tmp_path, name, kind, link):
    shard = tmp_path / "bad.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "s/a.jpg", _jpeg_bytes(0))
        _add(tar, "s/a.cls", b"1")
        _add(tar, name, _jpeg_bytes(1), kind, link)
    with pytest.raises(UnsafeFileError) as info:
        open_shards(str(shard), CLASSES)
    assert name in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("members, match", [({"a.jpg": _jpeg_bytes(0)}, r"expected a.cls and an image"),
                                            ({"a.jpg": _jpeg_bytes(0), "a.cls": b"7"},
                                             r"a.cls: expected a class index 0-2, found '7'")])
def test_bad_samples_are_data_errors(tmp_path, members, match):
    shard = tmp_path / "bad.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            _add(tar, name, data)
    with pytest.raises(DataError, match=match):
        open_shards([shard], CLASSES)


def test_too_few_shards_for_the_loader_processes(shard_dir):
    shards = open_shards([shard_dir / "train-0000.tar"], CLASSES)
    with pytest.raises(DataError, match=r"do not give each of 2 x 1 loader processes a batch of 2"):
        shard_loader(shards, TrainTransform(TrainAugment(), (16, 16), "bilinear", "torch"), 4, train=True,
                     rank=0, world_size=2, workers=1)
