"""Streaming image folders: layouts and labels, decoding, per-image seeded augmentation, distributed
shards, mid-epoch resume, bad files, worker failures, and the evaluation transform against predict's."""

import inspect
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

import convzoo
from convzoo.data.augment import BatchMix, EvalTransform, TrainAugment, TrainTransform, batch_mix
from convzoo.data.images import open_image
from convzoo.data.imagenet import FileList, imagenet_wnids, scan_class_folders, scan_labels_file
from convzoo.data.streaming import (EpochBatches, RawBatch, UnreadableClasses, choose_pipeline, decode_file,
                                    folder_loader, resolve_workers, usable_cores)
from convzoo.data.transforms import ImageTransform
from convzoo.errors import ConfigError, DataError
from convzoo.preprocess import preprocess_input

# Three ImageNet classes, far apart in the index: tench, space bar, toilet tissue.
CLASSES = {"n01440764": 0, "n04264628": 810, "n15075141": 999}
PER_CLASS = 8


def _jpeg(path, seed, size=(375, 500), **kwargs):
    rng = np.random.default_rng(seed)
    # Smooth content with some detail, so that resizing and cropping change the pixels visibly.
    base = rng.integers(0, 255, (size[0] // 25 + 1, size[1] // 25 + 1, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(base).resize((size[1], size[0]), Image.Resampling.BICUBIC))
    noise = rng.integers(-20, 20, big.shape)
    Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90, **kwargs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes named by wnid x 8 JPEGs of 500x375."""
    root = tmp_path_factory.mktemp("wnids")
    for c, wnid in enumerate(CLASSES):
        (root / wnid).mkdir()
        for i in range(PER_CLASS):
            _jpeg(root / wnid / f"{wnid}_{i}.JPEG", 100 * c + i)
    return root


def _train_transform(**fields):
    return TrainTransform(TrainAugment(**fields), (48, 48), "bicubic", "torch")


def _epoch(loader, epoch, start=0):
    loader.set_epoch(epoch, start)
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


# --- layouts and labels ---------------------------------------------------------------------------------

def test_class_folders_default_to_sorted_folder_indices(folder):
    files = scan_class_folders(folder)
    assert files.classes == sorted(CLASSES)
    assert np.bincount(files.labels).tolist() == [PER_CLASS] * 3
    assert all(files.path(i).parent.name == files.classes[files.labels[i]] for i in range(len(files)))


def test_wnid_folders_take_imagenet_indices_as_a_subset(folder):
    files = scan_class_folders(folder, imagenet_wnids())
    assert len(files.classes) == 1000
    assert sorted(set(files.labels.tolist())) == sorted(CLASSES.values())
    for i in range(len(files)):
        assert files.labels[i] == CLASSES[files.path(i).parent.name]
    assert files.present() == list(CLASSES)
    with pytest.raises(DataError, match=r"expected a folder for each of the 1000 ImageNet classes .*, found 3; missing n01443537, n01484850, n01491361 and 994 more$"):
        scan_class_folders(folder, imagenet_wnids(), subset=False)


def test_class_mismatch_names_a_few_folders_and_the_counts(tmp_path):
    for name in ["n01440764", "cats", "dogs", "eels", "fish", "goats"]:
        (tmp_path / name).mkdir()
        _jpeg(tmp_path / name / "a.jpg", 0, size=(20, 20))
    with pytest.raises(DataError) as info:
        scan_class_folders(tmp_path, imagenet_wnids())
    message = str(info.value)
    assert "found 5 of 6 folders that are not: cats, dogs, eels and 2 more" in message
    assert len(message) < 250 and "\n" not in message


def test_class_folder_without_images_is_refused(tmp_path):
    for name in ["a", "b"]:
        (tmp_path / name).mkdir()
    _jpeg(tmp_path / "a" / "x.jpg", 0, size=(20, 20))
    (tmp_path / "b" / "notes.txt").write_text("no image")
    with pytest.raises(DataError, match=r"found none in 1 of 2: b$"):
        scan_class_folders(tmp_path)


@pytest.fixture
def flat_val(tmp_path):
    """A flat validation folder of four images named as ImageNet's."""
    for i in range(1, 5):
        _jpeg(tmp_path / f"ILSVRC2012_val_{i:08d}.JPEG", i, size=(30, 40))
    return tmp_path


@pytest.mark.parametrize("text", [
    "ILSVRC2012_val_00000001.JPEG,n01440764\nILSVRC2012_val_00000002.JPEG,n15075141\n"
    "ILSVRC2012_val_00000003.JPEG,810\nILSVRC2012_val_00000004.JPEG,n04264628\n",
    "file,label\nILSVRC2012_val_00000001.JPEG,0\nILSVRC2012_val_00000002.JPEG,999\n"
    "ILSVRC2012_val_00000003.JPEG,n04264628\nILSVRC2012_val_00000004.JPEG,810\n",
    # Kaggle's LOC_val_solution.csv: a header, names without extension, boxes after the wnid.
    "ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 10 20 30 40 n01440764 1 2 3 4\n"
    "ILSVRC2012_val_00000002,n15075141 5 5 9 9\nILSVRC2012_val_00000003,n04264628 1 1 2 2\n"
    "ILSVRC2012_val_00000004,n04264628 0 0 1 1\n",
])
def test_labels_file_variants(flat_val, text):
    labels = flat_val / "labels.csv"
    labels.write_text(text)
    files = scan_labels_file(flat_val, labels, imagenet_wnids())
    by_name = {files.path(i).name: int(files.labels[i]) for i in range(len(files))}
    assert by_name == {"ILSVRC2012_val_00000001.JPEG": 0, "ILSVRC2012_val_00000002.JPEG": 999,
                       "ILSVRC2012_val_00000003.JPEG": 810, "ILSVRC2012_val_00000004.JPEG": 810}


@pytest.mark.parametrize("rows, match", [
    ("ILSVRC2012_val_00000001.JPEG,n01440764\nmissing_1.JPEG,n01440764\nmissing_2.JPEG,0\n",
     r"found 2 of 3 rows naming files that do not exist: missing_1.JPEG, missing_2.JPEG$"),
    ("ILSVRC2012_val_00000001.JPEG,n99999999\nILSVRC2012_val_00000002.JPEG,1000\n",
     r"expected labels among the 1000 ImageNet classes .* found 2 rows that are not: "
     r"ILSVRC2012_val_00000001.JPEG -> 'n99999999', ILSVRC2012_val_00000002.JPEG -> '1000'$"),
    ("ILSVRC2012_val_00000001.JPEG\n", r"expected two cells"),
    ("ILSVRC2012_val_00000001.JPEG,0\nILSVRC2012_val_00000001,1\n", r"found ILSVRC2012_val_00000001 twice"),
])
def test_labels_file_bad_rows_are_one_line_errors(flat_val, rows, match):
    labels = flat_val / "labels.csv"
    labels.write_text(rows)
    with pytest.raises(DataError, match=match) as info:
        scan_labels_file(flat_val, labels, imagenet_wnids())
    assert "\n" not in str(info.value)


def test_a_bad_first_row_is_not_taken_for_a_header(flat_val):
    labels = flat_val / "labels.csv"
    labels.write_text("ILSVRC2012_val_00000001.JPEG,tench\nILSVRC2012_val_00000002.JPEG,n01440764\n")
    with pytest.raises(DataError, match=r"found 1 rows that are not: ILSVRC2012_val_00000001.JPEG -> 'tench'"):
        scan_labels_file(flat_val, labels, imagenet_wnids())


# --- decoding --------------------------------------------------------------------------------------------

def test_decode_file_matches_open_image_for_jpeg_exif_png_and_gray(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    _jpeg(tmp_path / "rot.jpg", 1, size=(30, 50), exif=exif)
    _jpeg(tmp_path / "plain.jpg", 2, size=(31, 47))
    rgba = np.random.default_rng(3).integers(0, 255, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rgba[..., 0], "L").save(tmp_path / "gray.jpg", quality=90)
    for name in ["rot.jpg", "plain.jpg", "alpha.png", "gray.jpg"]:
        expected = torch.from_numpy(np.asarray(open_image(tmp_path / name)).copy()).permute(2, 0, 1)
        assert torch.equal(decode_file(tmp_path / name), expected), name
    assert decode_file(tmp_path / "rot.jpg").shape == (3, 50, 30)


# --- the evaluation transform is predict's --------------------------------------------------------------

@pytest.mark.parametrize("transform", [ImageTransform((64, 64), 0.875, "bicubic", "caffe"),
                                       ImageTransform((75, 75), 1.0, "bilinear", "tf"),
                                       ImageTransform((299, 299), 0.875, "bicubic", "torch")])
def test_eval_transform_equals_image_transform(folder, transform):
    paths = sorted(folder.rglob("*.JPEG"))[::5]
    expected = transform(paths)
    got = torch.stack([EvalTransform(transform)(decode_file(p)) for p in paths])
    assert torch.equal(got, expected)


def test_streaming_eval_gives_predict_top1_image_by_image(folder):
    torch.manual_seed(0)
    model = convzoo.create_model("xception_cifar_tiny", num_classes=1000).eval()
    transform = EvalTransform.from_model(model)
    assert transform.transform == ImageTransform.from_model(model)
    files = scan_class_folders(folder, imagenet_wnids())
    loader = folder_loader(files, transform, 5, train=False, workers=2)
    streamed, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            streamed.append(model(x).argmax(1))
            labels.append(y)
        paths = [files.path(i) for i in range(len(files))]
        reference = torch.cat([model(ImageTransform.from_model(model)(paths[i:i + 5])).argmax(1)
                               for i in range(0, len(paths), 5)])
    assert torch.equal(torch.cat(streamed), reference)
    assert torch.equal(torch.cat(labels), torch.from_numpy(files.labels))


# --- training augmentation ------------------------------------------------------------------------------

def test_train_augment_defaults_are_timms():
    from timm.data import Mixup
    from timm.data.transforms_factory import transforms_imagenet_train

    timm_train = inspect.signature(transforms_imagenet_train).parameters
    timm_mix = inspect.signature(Mixup).parameters
    aug = TrainAugment()
    for name in ("hflip", "vflip", "color_jitter", "re_prob", "re_mode"):
        assert getattr(aug, name) == timm_train[name].default, name
    assert aug.mixup_prob == timm_mix["prob"].default and aug.mixup_switch_prob == timm_mix["switch_prob"].default
    # timm's defaults inside transforms_imagenet_train when scale and ratio are None.
    assert aug.scale == (0.08, 1.0) and aug.ratio == pytest.approx((3 / 4, 4 / 3))


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5", "rand-m9-n3", "rand", "trivialaugment", "original"])
def test_auto_augment_values(spec):
    x = _train_transform(auto_augment=spec)(torch.randint(0, 255, (3, 60, 80), dtype=torch.uint8))
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32


@pytest.mark.parametrize("fields", [dict(auto_augment="rand-m11"), dict(auto_augment="augmix"),
                                    dict(auto_augment="rand-m9-inc1"), dict(scale=(0.5, 0.1)),
                                    dict(hflip=1.5), dict(re_mode="random"), dict(interpolation="nearest")])
def test_bad_augment_fields_are_config_errors(fields):
    with pytest.raises(ConfigError):
        TrainAugment(**fields).validate()


def test_whole_image_crop_is_torchvision_resize_then_normalisation():
    image = torch.randint(0, 255, (3, 60, 80), dtype=torch.uint8)
    transform = TrainTransform(TrainAugment(scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), hflip=0.0, color_jitter=0.0),
                               (30, 40), "bilinear", "caffe")
    expected = preprocess_input(TF.resize(image, [30, 40], antialias=True)[None].float(), "caffe")[0]
    assert torch.equal(transform(image), expected)


def test_batch_mix_gives_soft_targets():
    mix = batch_mix(TrainAugment(mixup=0.8, cutmix=1.0), 10)
    assert isinstance(mix, BatchMix) and batch_mix(TrainAugment(), 10) is None
    x, y = mix(torch.rand(6, 3, 8, 8), torch.arange(6))
    assert y.shape == (6, 10) and torch.allclose(y.sum(1), torch.ones(6))


# --- order, shards and resume ---------------------------------------------------------------------------

def test_epoch_order_is_a_function_of_seed_and_epoch():
    a = EpochBatches(100, 10, train=True, seed=3)
    b = EpochBatches(100, 10, train=True, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert torch.equal(a.order(), b.order())
    b.set_epoch(3)
    assert not torch.equal(a.order(), b.order())
    assert sorted(a.order().tolist()) == list(range(100))


@pytest.mark.parametrize("train", [True, False])
def test_ranks_read_disjoint_shards_of_the_global_batches(train):
    whole = EpochBatches(103, 8, train=train, seed=1)
    ranks = [EpochBatches(103, 8, train=train, seed=1, rank=r, world_size=2) for r in range(2)]
    for s in [whole, *ranks]:
        s.set_epoch(4)
    parts = [[[t.index for t in batch] for batch in r] for r in ranks]
    seen = [i for p in parts for batch in p for i in batch]
    assert len(seen) == len(set(seen))
    if train:
        assert len(ranks[0]) == len(ranks[1]) == len(whole) == 103 // 8
        for step, batch in enumerate(whole):
            assert [t.index for t in batch] == parts[0][step] + parts[1][step]
    else:
        assert sorted(seen) == list(range(103))


def test_augmentation_depends_on_epoch_not_on_workers(folder):
    files = scan_class_folders(folder)
    transform = _train_transform(auto_augment="rand-m9-mstd0.5", re_prob=0.5)
    single = folder_loader(files, transform, 6, train=True, seed=7, workers=0)
    double = folder_loader(files, transform, 6, train=True, seed=7, workers=2)
    first = _epoch(single, 1)
    assert _same(first, _epoch(double, 1))
    assert not torch.equal(first[0][0], _epoch(single, 2)[0][0])


def test_mid_epoch_start_equals_the_uninterrupted_epoch(folder):
    """Bit for bit on the CPU, mixup included, from a fresh loader with another number of workers (as after
    a restart)."""
    files = scan_class_folders(folder, imagenet_wnids())
    aug = TrainAugment(auto_augment="trivialaugment", re_prob=0.5, re_mode="pixel", mixup=0.8, cutmix=1.0)
    transform = TrainTransform(aug, (48, 48), "bicubic", "torch")
    whole = _epoch(folder_loader(files, transform, 4, train=True, seed=5, workers=2, mix=batch_mix(aug, 1000)), 3)
    resumed = folder_loader(files, transform, 4, train=True, seed=5, workers=1, mix=batch_mix(aug, 1000))
    assert len(whole) == len(resumed) == 6
    tail = _epoch(resumed, 3, start=4)
    assert _same(whole[4:], tail)
    assert resumed.stats.progress().step == 6 and resumed.stats.images == 8


# --- bad files and bad workers --------------------------------------------------------------------------

def _copy_folder(src, dst, classes=None):
    for wnid in classes or CLASSES:
        (dst / wnid).mkdir(parents=True)
        for p in sorted((src / wnid).iterdir()):
            (dst / wnid / p.name).write_bytes(p.read_bytes())
    return dst


def test_corrupt_and_truncated_jpegs_are_skipped_and_counted(folder, tmp_path):
    root = _copy_folder(folder, tmp_path / "data")
    victim = root / "n04264628" / "n04264628_3.JPEG"
    victim.write_bytes(victim.read_bytes()[:2000])
    (root / "n15075141" / "n15075141_5.JPEG").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    loader = folder_loader(scan_class_folders(root), _train_transform(), 4, train=True, workers=2)
    batches = _epoch(loader, 0)
    assert len(batches) == 6 and sum(len(y) for _, y in batches) == 22
    assert loader.stats.images == 22 and loader.stats.attempted == 24 and len(loader.stats.skipped) == 2
    assert any("n04264628_3.JPEG" in s and "damaged" in s for s in loader.stats.skipped)


def test_a_mostly_corrupt_folder_stops(folder, tmp_path):
    """Three quarters of every class unreadable (no class without a readable image)."""
    root = _copy_folder(folder, tmp_path / "data")
    for wnid in root.iterdir():
        for p in sorted(wnid.glob("*.JPEG"))[:6]:
            p.write_bytes(p.read_bytes()[:300])
    loader = folder_loader(scan_class_folders(root), _train_transform(), 4, train=False, workers=0)
    with pytest.raises(DataError, match=r"expected readable images, found 18 of the 24 read unreadable \(first: "):
        _epoch(loader, 0)


def test_workers_are_capped_at_the_cores_with_a_warning():
    cores = usable_cores()
    with pytest.warns(UserWarning, match=rf"workers {cores + 3} is more than the {cores} CPU cores"):
        assert resolve_workers(cores + 3) == cores
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_workers(1) == 1
    with pytest.raises(ConfigError):
        resolve_workers(-1)


def test_a_killed_worker_is_a_one_line_data_error(folder):
    loader = folder_loader(scan_class_folders(folder), _train_transform(), 2, train=False, workers=2, prefetch=1)
    batches = iter(loader)
    next(batches)
    for child in multiprocessing.active_children():
        os.kill(child.pid, signal.SIGKILL)
    with pytest.raises(DataError, match=r"a data loading worker process stopped \(DataLoader worker") as info:
        for _ in batches:
            pass
    assert "\n" not in str(info.value)
    # The dead workers are deregistered: torch's SIGCHLD handler no longer raises when any other child
    # process of this program exits (it did, at random places, in later tests).
    for _ in range(3):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        time.sleep(0.1)


# --- in memory or streaming -----------------------------------------------------------------------------

def test_choose_pipeline():
    assert choose_pipeline(5085, (32, 32)) == "memory"  # the embedded CIFAR-10 subset
    assert choose_pipeline(20_000, (299, 299)) == "stream"  # 5.4 GB
    assert choose_pipeline(20_000, (64, 64)) == "memory"  # 246 MB
    assert choose_pipeline(20_000, (64, 64), processes=16) == "stream"  # each of 16 holds a copy
    assert choose_pipeline(20_000, (64, 64), budget=200 << 20) == "stream"
    assert choose_pipeline(10, (32, 32), force="stream") == "stream"
    with pytest.raises(ConfigError):
        choose_pipeline(10, (32, 32), force="disk")


def test_jpeg_bytes_round_trip_through_pillow_header_check(tmp_path):
    big = tmp_path / "big.jpg"
    _jpeg(big, 0, size=(100, 100))
    with pytest.raises(convzoo.errors.ImageError, match=r"expected at most 5,000 pixels, found 100x100"):
        decode_file(big, max_pixels=5000)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "JPEG")
    (tmp_path / "tiny.jpg").write_bytes(buf.getvalue())
    assert decode_file(tmp_path / "tiny.jpg").shape == (3, 4, 4)


def test_loading_in_process_leaves_the_global_generator_alone(folder):
    """The trainer's own randomness (dropout, its checkpointed RNG state) must not depend on the loader."""
    aug = TrainAugment(auto_augment="rand-m9-mstd0.5", re_prob=0.5, mixup=0.8)
    loader = folder_loader(scan_class_folders(folder), TrainTransform(aug, (48, 48), "bicubic", "torch"), 8,
                           train=True, workers=0, mix=batch_mix(aug, 3))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    _epoch(loader, 0)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_class_stops_once_all_its_files_are_found_unreadable(tmp_path):
    """Over passes: a readable image of a class clears its count; reasons of a class not yet seen readable
    are held back, so that the stop is the only line."""
    files = FileList(tmp_path, np.array([b"a/0.jpg", b"a/1.jpg", b"b/0.jpg", b"b/1.jpg"]), np.array([0, 0, 1, 1]),
                     ["a", "b"])
    guard = UnreadableClasses(files)

    def batch(good: list[int], bad: list[int]) -> RawBatch:
        return RawBatch(None, torch.tensor(good, dtype=torch.int64), tuple(f"r{i}" for i in bad), tuple(bad),
                        len(good) + len(bad))

    assert guard.update(batch([0], [2])) == [] and guard.flush() == ["r2"]
    with pytest.raises(DataError, match=r"^class folder .*/b: .* none among the 2 of its files read \(first: r2\)$"):
        guard.update(batch([], [3]))
    other = UnreadableClasses(files)
    assert other.update(batch([], [2])) == [] and other.update(batch([1], [])) == ["r2"]
    assert other.update(batch([], [3])) == ["r3"]  # b was read since file 2 failed: no stop
