"""open_image: every common image kind comes back upright as 8-bit RGB; broken, empty and oversized files
raise ImageError, oversized ones before any decoding. resize_cover_crop keeps the centre."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from convzoo.data import open_image, resize_cover_crop
from convzoo.errors import ConfigError, ImageError


def pixels(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    im.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    out = pixels(open_image(tmp_path / "turned.jpg"))
    assert out.shape == (40, 20, 3)
    assert np.abs(out[5, 10] - [255, 0, 0]).max() < 10 and np.abs(out[35, 10] - [0, 0, 255]).max() < 10


def test_grayscale_and_one_bit_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (4, 4), 77).save(tmp_path / "gray.png")
    Image.new("1", (4, 4), 1).save(tmp_path / "bw.png")
    assert (pixels(open_image(tmp_path / "gray.png")) == 77).all()
    assert (pixels(open_image(tmp_path / "bw.png")) == 255).all()


def test_palette_with_transparency_is_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("P", (4, 2), 0)
    im.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    im.paste(1, (2, 0, 4, 2))
    im.save(tmp_path / "palette.png", transparency=0)
    out = pixels(open_image(tmp_path / "palette.png"))
    assert (out[:, :2] == 255).all() and (out[:, 2:] == [200, 10, 20]).all()


def test_rgba_and_la_are_composited_on_white(tmp_path: Path) -> None:
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = pixels(open_image(tmp_path / "rgba.png"))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [0, 0, 255]
    assert np.abs(out[0, 2] - 127).max() <= 1
    Image.new("LA", (2, 2), (0, 0)).save(tmp_path / "la.png")
    assert (pixels(open_image(tmp_path / "la.png")) == 255).all()


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (3, 3), (255, 0, 0, 0)).save(tmp_path / "cyan.tif")
    assert (pixels(open_image(tmp_path / "cyan.tif")) == [0, 255, 255]).all()


def test_16_and_32_bit_grayscale_are_scaled_to_8_bits(tmp_path: Path) -> None:
    values = np.array([[0, 128 * 257, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    assert pixels(open_image(tmp_path / "deep.png"))[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(values.astype(np.int32), "I").save(tmp_path / "int.tif")
    assert Image.open(tmp_path / "int.tif").mode == "I"
    assert pixels(open_image(tmp_path / "int.tif"))[0].tolist() == [[0] * 3, [128] * 3, [255] * 3]


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares ``width`` x ``height`` 1-bit pixels and holds a few bytes of image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_oversized_images_are_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png_header_only(tmp_path / "huge.png", 10_000, 10_000)

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match="expected at most 89,478,485 pixels, found 10000x10000"):
        open_image(tmp_path / "huge.png")
    monkeypatch.undo()
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match="expected at most 5,000 pixels"):
        open_image(tmp_path / "small.png", max_pixels=5000)
    assert open_image(tmp_path / "small.png", max_pixels=None).size == (100, 100)


def test_missing_empty_and_non_image_files_raise(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="found nothing"):
        open_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        open_image(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("this is not a JPEG")
    with pytest.raises(ImageError, match="does not recognise"):
        open_image(tmp_path / "text.jpg")


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_jpeg_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load_truncated: bool) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    assert open_image(tmp_path / "full.jpg").size == (64, 64)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    with pytest.raises(ImageError, match="damaged.*truncated"):
        open_image(tmp_path / "cut.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated


def test_resize_cover_crop_keeps_the_centre() -> None:
    im = Image.new("RGB", (60, 20), (255, 0, 0))
    im.paste((0, 255, 0), (20, 0, 40, 20))
    for resample in ("bilinear", "bicubic"):
        out = pixels(resize_cover_crop(im, (10, 10), resample))
        assert out.shape == (10, 10, 3) and (out[:, 2:8] == [0, 255, 0]).all() and (out[..., 1] > 128).all()
    tall = resize_cover_crop(Image.new("RGB", (20, 60)), (30, 12))
    assert tall.size == (12, 30)
    with pytest.raises(ConfigError, match="resample"):
        resize_cover_crop(im, (10, 10), "nearest")
