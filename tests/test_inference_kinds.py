"""Issues 13 and 14 beyond the acceptance examples, on the inference side: what predict names the classes
with (a class file, a checkpoint's names, ImageNet only for ImageNet's 1,000), a softmax classifier read
as probabilities once, the graph's dataflow for every family, the timm/Keras head arguments surviving a
checkpoint, images of every sample depth, and the argument types every verb uses. Expected values come from
the model run eagerly, Keras' and timm's conventions, or the picture saved with 8 bits."""

from __future__ import annotations

import argparse
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convzoo
from convzoo.cli.common import check_output_file, float_in, int_in
from convzoo.data.images import open_image
from convzoo.errors import ConfigError, ImageError
from convzoo.graph import dataflow
from convzoo.preprocess import preprocess_input
from convzoo.registry import RECORDS, model_kwargs_from_json
from convzoo.weights import load_checkpoint, read_checkpoint
from helpers import randomize_batchnorm_
from user_files import assert_one_line_error, cli, imagenet_names, json_lines


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def _checkpoint(folder: Path, classes: int, names: list[str] | None = None, **kwargs) -> Path:
    model = randomize_batchnorm_(convzoo.create_model("xception_cifar_tiny", num_classes=classes, **kwargs), seed=2)
    return convzoo.save_checkpoint(model, folder / f"c{classes}.safetensors", class_names=names)


# predict: class names and probabilities


def test_predict_names_classes_from_a_file_and_counts_them(capsys, tmp_path, photo):
    ckpt = _checkpoint(tmp_path, 3)
    (tmp_path / "names.txt").write_text("cat\n\ndog\nbird\n")
    code, out, err = cli(capsys, "predict", "--weights", ckpt, photo, "--classes", tmp_path / "names.txt", "--json")
    assert code == 0, err
    assert {p["label"] for p in json_lines(out)[0]["predictions"]} == {"cat", "dog", "bird"}  # min(5, 3) rows
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    code, out, err = cli(capsys, "predict", "--weights", ckpt, photo, "--classes", tmp_path / "two.txt")
    assert_one_line_error(code, err, "3 class names", "got 2")
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)))
    code, out, err = cli(capsys, "predict", "--weights", ckpt, photo, "--classes", tmp_path / "bin.txt")
    assert_one_line_error(code, err, str(tmp_path / "bin.txt"), "binary")


def test_predict_shows_indices_for_a_head_that_is_not_imagenets(capsys, tmp_path, photo):
    """A 1,001-class checkpoint without names: indices, never ImageNet's labels shifted by one."""
    ckpt = _checkpoint(tmp_path, 1001)
    code, out, err = cli(capsys, "predict", "--weights", ckpt, photo, "--json", "--top", "7")
    assert code == 0, err
    preds = json_lines(out)[0]["predictions"]
    assert len(preds) == 7 and all(p["label"] == p["class_id"] and p["class_id"].isdigit() for p in preds)
    assert not {p["label"] for p in preds} & imagenet_names()


def test_a_softmax_classifier_is_read_as_probabilities_once(capsys, tmp_path, photo):
    logits_ckpt = _checkpoint(tmp_path, 4, ["a", "b", "c", "d"])
    model = convzoo.load_checkpoint(logits_ckpt)
    model.classifier_activation = "softmax"
    soft_ckpt = convzoo.save_checkpoint(model, tmp_path / "soft.safetensors", class_names=["a", "b", "c", "d"])
    assert read_checkpoint(soft_ckpt).model_args["classifier_activation"] == "softmax"
    rows = {}
    for name, ckpt in (("logits", logits_ckpt), ("softmax", soft_ckpt)):
        code, out, err = cli(capsys, "predict", "--weights", ckpt, photo, "--json", "--device", "cpu",
                             "--precision", "fp32")
        assert code == 0, err
        rows[name] = {p["label"]: p["probability"] for p in json_lines(out)[0]["predictions"]}
    assert rows["logits"] == pytest.approx(rows["softmax"], abs=1e-5)
    assert sum(rows["softmax"].values()) == pytest.approx(1.0, abs=1e-4)


def test_predict_a_run_checkpoint_folder_and_its_crash_window(capsys, tmp_path, photo):
    """A checkpoint folder as --weights; a folder replaced by two renames and interrupted between them
    leaves .NAME.old, which predict uses as eval and --resume do."""
    folder = tmp_path / "last"
    folder.mkdir()
    _checkpoint(tmp_path, 5).rename(folder / "model.safetensors")
    code, out, err = cli(capsys, "predict", "--weights", folder, photo, "--json")
    assert code == 0, err
    folder.rename(tmp_path / ".last.old")
    code, crashed, err = cli(capsys, "predict", "--weights", folder, photo, "--json")
    assert code == 0, err
    assert json_lines(crashed) == json_lines(out)


# graph: the dataflow of every family


def test_inception_e_block_branches_split_and_concatenate(capsys, tmp_path):
    """Mixed_7b's 3x3 branch splits into parallel 1x3 and 3x1 convolutions that one concatenation joins."""
    with torch.device("meta"):
        model = convzoo.create_model("inception_v3_cifar")
    flow = dataflow(model, (3, 32, 32), depth=2)
    preds = {n: {a for a, b in flow.edges if b == n} for n in flow.nodes}
    assert preds["Mixed_7b.branch3x3_2a"] == preds["Mixed_7b.branch3x3_2b"] == {"Mixed_7b.branch3x3_1"}
    inner = [n for n, p in preds.items() if p == {"Mixed_7b.branch3x3_2a", "Mixed_7b.branch3x3_2b"}]
    assert len(inner) == 1 and re.search(r"\bcat", inner[0])
    outer = max((n for n in flow.nodes if n.startswith("Mixed_7b.cat")), key=lambda n: len(preds[n]))
    assert inner[0] in preds[outer] and len(preds[outer]) == 4


@pytest.mark.parametrize("name", ["xception_cifar_tiny", "resnext29_2x64d", "inception_v3_cifar"])
def test_graph_at_depth_one_is_the_stage_chain_with_its_shapes(name):
    """Stages run one after another: each stage node is fed by the one before and shows its output shape."""
    with torch.device("meta"):
        model = convzoo.create_model(name)
    flow = dataflow(model, (3, 32, 32), depth=1)
    stages = list(model.stage_names)
    with torch.device("meta"):
        shapes = [tuple(o.shape[1:]) for o in convzoo.create_model(name, features_only=True,
                                                                   out_indices=(-1,))(torch.empty(1, 3, 32, 32))]
    assert ("input", stages[0]) in flow.edges
    assert all((a, b) in flow.edges for a, b in zip(stages, stages[1:]))
    assert flow.nodes[stages[-1]].shape == shapes[-1]


def test_graph_refuses_a_depth_it_cannot_draw():
    with torch.device("meta"):
        model = convzoo.create_model("xception_cifar_tiny")
    with pytest.raises(ConfigError, match="depth must be 1 or 2"):
        dataflow(model, (3, 32, 32), depth=3)


# timm/Keras head arguments through a checkpoint


def test_head_arguments_survive_a_checkpoint(tmp_path):
    model = randomize_batchnorm_(convzoo.create_model("resnext29_2x64d", num_classes=6, global_pool="max",
                                                      classifier_activation="softmax")).eval()
    loaded = load_checkpoint(convzoo.save_checkpoint(model, tmp_path / "h.safetensors")).eval()
    assert (loaded.global_pool, loaded.classifier_activation, loaded.num_classes) == ("max", "softmax", 6)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
        assert torch.allclose(model(x).sum(1), torch.ones(2), atol=1e-5)


def test_a_checkpoint_written_before_global_pool_keeps_its_pooling():
    """Older checkpoints recorded the head's pooling as 'pooling' beside the classifier."""
    args = model_kwargs_from_json("resnext29_2x64d", {"num_classes": 6, "pooling": "max"})
    assert args == {"num_classes": 6, "global_pool": "max"}
    assert model_kwargs_from_json("resnext29_2x64d", {"include_top": False, "pooling": "avg"}) == \
        {"include_top": False, "pooling": "avg"}


@pytest.mark.parametrize("bad", [dict(classifier_activation="relu"), dict(global_pool="median"),
                                 dict(global_pool="", num_classes=3), dict(pretrained=True, weights="x.pth")])
def test_head_arguments_out_of_their_range_are_refused(bad):
    with pytest.raises(ConfigError):
        convzoo.create_model("xception_cifar_tiny", **bad)


def test_list_models_pretrained_and_feature_info_lookups():
    assert convzoo.list_models(pretrained=True) == sorted(RECORDS)
    assert convzoo.list_models("") == convzoo.list_models()
    with torch.device("meta"):
        features = convzoo.create_model("xception", features_only=True, out_indices=(1, -1))
    info = features.feature_info
    assert info.channels(0) == info.get("num_chs", 0) == info[0]["num_chs"]
    assert info.module_name() == [d["module"] for d in info.get_dicts()]
    assert info.get_dicts(keys=["reduction"], idx=1) == {"reduction": info.reduction(1)}


# images of every sample depth


def _tiff_rgb16(path: Path, values: np.ndarray) -> Path:
    """An uncompressed little-endian 48-bit RGB TIFF, tag by tag (Pillow cannot write one)."""
    h, w, _ = values.shape
    data = values.astype("<u2").tobytes()
    tags = [(256, 3, w), (257, 3, h), (258, 3, None), (259, 3, 1), (262, 3, 2), (273, 4, None), (277, 3, 3),
            (278, 3, h), (279, 4, len(data)), (284, 3, 1)]
    bits_at = 8 + 2 + len(tags) * 12 + 4
    out = b"II*\0" + struct.pack("<IH", 8, len(tags))
    for tag, kind, value in tags:
        value = bits_at if tag == 258 else bits_at + 6 if tag == 273 else value
        count = 3 if tag == 258 else 1
        out += struct.pack("<HHIHH" if kind == 3 and tag != 258 else "<HHII", tag, kind, count, value,
                           *((0,) if kind == 3 and tag != 258 else ()))
    path.write_bytes(out + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data)
    return path


def _png16(path: Path, values: np.ndarray, colour_type: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = values.shape[:2]
    raw = b"".join(b"\0" + row.tobytes() for row in values.astype(">u2").reshape(h, -1))
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def deep_rgb() -> np.ndarray:
    """16-bit levels 256 k + 255: rounding (k + 1) and truncating (k) to 8 bits differ everywhere."""
    return (np.random.default_rng(4).integers(0, 127, (9, 11, 3)) * 256 + 255).astype(np.uint16)


def test_16_bit_rgb_tiff_and_rgba_png_are_read_whole(tmp_path, deep_rgb):
    expected = np.rint(deep_rgb / 257).astype(np.uint8)
    assert np.array_equal(np.asarray(open_image(_tiff_rgb16(tmp_path / "rgb.tif", deep_rgb))), expected)
    opaque = np.concatenate([deep_rgb, np.full((9, 11, 1), 65535, np.uint16)], -1)
    assert np.array_equal(np.asarray(open_image(_png16(tmp_path / "rgba.png", opaque, 6))), expected)


def test_depths_that_hold_no_known_picture_are_refused(tmp_path, deep_rgb):
    gray_alpha = _png16(tmp_path / "la.png", np.stack([deep_rgb[..., 0], deep_rgb[..., 1]], -1), 4)
    with pytest.raises(ImageError, match="16 bits per sample"):
        open_image(gray_alpha)
    Image.fromarray(np.full((8, 8), 70000, np.int32), "I").save(tmp_path / "wide.tif")
    with pytest.raises(ImageError, match="0-65535"):
        open_image(tmp_path / "wide.tif")
    Image.fromarray(np.full((8, 8), 0.25, np.float32)).save(tmp_path / "quarter.tif")
    assert np.asarray(open_image(tmp_path / "quarter.tif"))[0, 0].tolist() == [64, 64, 64]


# argument types


@pytest.mark.parametrize("parse, text, message", [
    (int_in(1), "0", "at least 1"), (int_in(1, 4096), "4097", "[1, 4096]"), (int_in(0), "x", "got 'x'"),
    (float_in(0.0, low_open=True), "nan", "(0, inf)"), (float_in(0.0, low_open=True), "inf", "(0, inf)"),
    (float_in(0.0, low_open=True), "0", "(0, inf)"), (float_in(0.0, 1.0), "1.5", "[0, 1]"),
])
def test_argument_types_give_the_range(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        parse(text)


def test_output_paths_are_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.json").mkdir()
    for path, message in ((tmp_path / "file" / "out.json", "is a file"), (tmp_path / "dir.json", "existing folder"),
                          (tmp_path / "out.txt", ".json")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
            check_output_file(path, (".json",), "the results")
    assert check_output_file(tmp_path / "new" / "deeper" / "out.json", (".json",), "x").name == "out.json"
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["dir.json", "file"]


def test_every_verb_with_a_model_argument_checks_it_when_parsing(capsys, tmp_path):
    for argv in (["summary", "resnet5"], ["graph", "resnet5", "-o", tmp_path / "g.dot"],
                 ["bench", "resnet5"], ["weights", "convert", "x.h5", tmp_path / "o.safetensors", "--model", "resnet5"]):
        code, out, err = cli(capsys, *argv)
        assert_one_line_error(code, err, "unknown model 'resnet5'", "resnet50")


# Keras' imagenet_utils_test.py, its checks of preprocess_input with the names changed


def test_preprocess_input_takes_keras_arguments_and_defaults():
    from keras.applications import imagenet_utils

    rng = np.random.default_rng(6)
    for x in (rng.uniform(0, 255, (2, 10, 10, 3)), rng.uniform(0, 255, (10, 10, 3))):
        xint = x.astype("int32")
        for data in (x, xint):
            expected = np.asarray(imagenet_utils.preprocess_input(data.copy()))  # mode 'caffe', channels_last
            assert np.allclose(preprocess_input(data.copy()), expected, atol=1e-4)
            assert np.allclose(preprocess_input(data.copy(), "channels_last"), expected, atol=1e-4)
            first = np.moveaxis(data, -1, -3).copy()
            assert np.allclose(np.moveaxis(preprocess_input(first, "channels_first"), -3, -1), expected, atol=1e-4)
    with pytest.raises(ValueError):
        preprocess_input(rng.uniform(0, 255, (10, 10, 3)), mode="some_unknown_mode")


@pytest.mark.parametrize("mode", ["torch", "tf", "caffe"])
def test_preprocess_input_writes_over_float_numpy_like_keras(mode):
    x = np.random.default_rng(7).uniform(0, 255, (2, 10, 10, 3))
    xint = x.astype("int")
    out = preprocess_input(x, "channels_last", mode=mode)
    assert out is x  # Keras writes the result over float input
    assert preprocess_input(xint, "channels_last", mode=mode).max() != xint.astype("float").max()
    tensor = torch.from_numpy(np.random.default_rng(7).uniform(0, 255, (2, 3, 10, 10)))
    kept = tensor.clone()
    preprocess_input(tensor, mode=mode)
    assert torch.equal(tensor, kept)  # a tensor never is
