"""Issue 14: images of more than 8 bits per sample are read as the picture they hold, never silently as
another one. The chosen conventions: a float image holds values in [0, 1] (as torchvision's ToTensor and
scikit-image's float images do) and is scaled to 0-255; a float image with values outside [0, 1] (or NaN) is
refused with one line; a 16-bit image is scaled by 255/65535 and rounded (``round(v / 257)``, the
convention convzoo already uses for 16-bit grayscale). Each must predict as the same picture saved with 8
bits: `convzoo predict --json` probabilities equal within 1e-4."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convzoo
from bad_inputs import error_line, run_in_process
from helpers import randomize_batchnorm_

SIZE = 32  # the model's input size: no resampling between the file and the model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A CIFAR-sized Xception with seeded BatchNorm statistics (it tells pictures apart clearly)."""
    model = randomize_batchnorm_(convzoo.create_model("xception_cifar_tiny"), seed=3)
    path = tmp_path_factory.mktemp("depths") / "random.safetensors"
    convzoo.save_checkpoint(model, path, class_names=[f"c{i}" for i in range(10)])
    return path


def probabilities(checkpoint: Path, image: Path, capsys) -> np.ndarray:
    """`convzoo predict --json` probabilities of the ten classes, by class id."""
    shown = run_in_process(["predict", "--weights", str(checkpoint), str(image), "--top", "10", "--json",
                            "--device", "cpu", "--precision", "fp32"], capsys)
    assert shown.code == 0, shown.err
    predictions = json.loads(shown.out)["predictions"]
    return np.array([p["probability"] for p in sorted(predictions, key=lambda p: int(p["class_id"]))])


def picture(channels: int) -> np.ndarray:
    """An 8-bit picture (H, W) or (H, W, C) with levels 0-126: gradients and seeded noise."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    planes = [(x * (c + 1) + y * (2 - c)) % 1.0 for c in range(channels)]
    values = np.stack(planes, -1) * 0.7 + rng.random((SIZE, SIZE, channels)) * 0.3
    values = np.rint(values * 126).astype(np.uint8)
    return values[..., 0] if channels == 1 else values


def deep(values: np.ndarray) -> np.ndarray:
    """16-bit levels ``256 k + 255`` for 8-bit levels ``k``: ``round(v / 257)`` is ``k + 1`` (for k <= 126),
    where keeping the high byte would give ``k``, so the prediction tells the two conventions apart."""
    return values.astype(np.uint16) * 256 + 255


def to_8_bits(values: np.ndarray) -> np.ndarray:
    return np.rint(values.astype(np.float64) / 257).astype(np.uint8)


def write_png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit PNG (grayscale or RGB) written byte by byte: Pillow cannot write 48-bit RGB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = values.shape[:2]
    colour_type = 0 if values.ndim == 2 else 2
    rows = values.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def assert_same_prediction(checkpoint: Path, image: Path, reference: Path, capsys) -> None:
    p, q = probabilities(checkpoint, image, capsys), probabilities(checkpoint, reference, capsys)
    assert np.abs(p - q).max() <= 1e-4, f"{image.name} predicts {p}, its 8-bit version {q}"


def test_float_tiff_in_0_1_is_the_picture_scaled_to_255(checkpoint, tmp_path, capsys):
    gray = picture(1) * 2
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(gray.astype(np.float32) / 255).save(tmp_path / "float.tif")
    Image.new("L", (SIZE, SIZE), 0).save(tmp_path / "black.png")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    assert_same_prediction(checkpoint, tmp_path / "float.tif", tmp_path / "gray.png", capsys)
    black = probabilities(checkpoint, tmp_path / "black.png", capsys)
    assert np.abs(probabilities(checkpoint, tmp_path / "gray.png", capsys) - black).max() > 1e-3, \
        "the model cannot tell this picture from a black one: the test would prove nothing"


@pytest.mark.parametrize("kind", ["0-255", "negative", "nan"])
def test_float_tiff_outside_0_1_is_refused(kind, checkpoint, tmp_path, capsys):
    values = (picture(1) * 2).astype(np.float32)
    values = {"0-255": values, "negative": values / 255 - 0.5, "nan": values / 255}[kind]
    if kind == "nan":
        values[3, 4] = np.nan
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    shown = run_in_process(["predict", "--weights", str(checkpoint), str(path), "--device", "cpu"], capsys)
    error_line(shown, str(path), re.compile(r"\[\s*0(\.0+)?\s*,\s*1(\.0+)?\s*\]|\b0(\.0+)?\s*(\.\.|to|and|-)\s*1\b"))


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16_bit_grayscale_predicts_as_its_8_bit_version(fmt, checkpoint, tmp_path, capsys):
    values = deep(picture(1))
    Image.fromarray(values).save(tmp_path / f"deep.{fmt}")
    assert Image.open(tmp_path / f"deep.{fmt}").mode == "I;16"
    Image.fromarray(to_8_bits(values)).save(tmp_path / "gray.png")
    assert_same_prediction(checkpoint, tmp_path / f"deep.{fmt}", tmp_path / "gray.png", capsys)


def test_16_bit_rgb_png_predicts_as_its_8_bit_version(checkpoint, tmp_path, capsys):
    values = deep(picture(3))
    write_png16(tmp_path / "deep.png", values)
    Image.fromarray(to_8_bits(values)).save(tmp_path / "rgb.png")
    assert_same_prediction(checkpoint, tmp_path / "deep.png", tmp_path / "rgb.png", capsys)
