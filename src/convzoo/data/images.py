"""Opening image files of any common kind as 8-bit RGB, refusing what cannot be read whole.

Orientation follows the EXIF tag. Transparent images (RGBA, LA, palettes with a transparent colour) are
composited on white, as they are shown on a page. CMYK is converted without a colour profile. 16-bit and
32-bit integer grayscale (I;16, I) is scaled from 0-65535 to 0-255.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, ImageError
from .dataset import RESAMPLE, check_size, cover_crop_box

# Pillow's own default limit (Image.MAX_IMAGE_PIXELS): about 89.5 megapixels, 1/4 GiB at 24 bits.
DEFAULT_MAX_PIXELS = 89_478_485
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                              ".pgm", ".pbm"})
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_strict_lock = threading.Lock()


@contextmanager
def _strict_loading() -> Iterator[None]:
    """Make Pillow raise on truncated files while decoding, whatever other code set globally."""
    with _strict_lock:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def open_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image at ``path`` decoded in full, upright and as 8-bit RGB.

    Images of more than ``max_pixels`` pixels (None: no limit of ours) are refused from their header,
    before decoding; Pillow's own decompression-bomb guard (twice ``Image.MAX_IMAGE_PIXELS``) still applies.
    Raises :class:`ImageError` for a missing, empty, unrecognised, truncated or oversized file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"expected an image file at {path}, found nothing")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: expected an image, found an empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(f"{path}: expected at most {max_pixels:,} pixels, found {width}x{height} = "
                                 f"{width * height:,} (pass a larger max_pixels to allow it)")
            with _strict_loading():
                im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: expected an image, found a file Pillow does not recognise") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: expected an image of sane size, found {exc}") from None
    except Exception as exc:
        # Pillow reports damaged files with many exception types (OSError, SyntaxError, struct.error, ...).
        raise ImageError(f"{path}: expected a complete image, found a damaged one "
                         f"({type(exc).__name__}: {exc})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB: alpha composited on white, 16/32-bit grayscale scaled to 8 bits."""
    if im.mode.startswith("I"):
        gray = np.clip(np.asarray(im, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if "transparency" in im.info or im.mode in ("PA", "LA"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def resize_cover_crop(im: Image.Image, size: tuple[int, int], resample: str = "bilinear") -> Image.Image:
    """``im`` scaled so that it covers ``size`` (H, W) with its aspect ratio kept (its shorter side fitting)
    and centre-cropped to ``size``, resampled once ('bilinear' or 'bicubic', antialiased by Pillow)."""
    height, width = check_size(size)
    if resample not in RESAMPLE:
        raise ConfigError(f"resample must be one of {', '.join(RESAMPLE)}, got {resample!r}")
    (new_h, new_w), (left, top, right, bottom) = cover_crop_box(im.height, im.width, (height, width))
    sx, sy = im.width / new_w, im.height / new_h
    box = (left * sx, top * sy, right * sx, bottom * sy)
    return im.resize((width, height), _RESAMPLE[resample], box=box)
