"""Opening image files of any common kind as 8-bit RGB, refusing what cannot be read whole.

Orientation follows the EXIF tag. Transparent images (RGBA, LA, palettes with a transparent colour) are
composited on white, as they are shown on a page. CMYK is converted without a colour profile.

Images of more than 8 bits per sample are read as the picture they hold, scaled to 8 bits by
``round(v * 255 / max)``, never truncated: 16-bit samples (grayscale, RGB, RGBA, CMYK; ``round(v / 257)``),
32-bit integer grayscale holding 16-bit levels 0-65535, and 32-bit float grayscale holding values in [0, 1]
(as torchvision's ``ToTensor`` and scikit-image write them). What cannot be read that way is refused with
one line: a float image with values outside [0, 1] or NaN, a 32-bit integer image beyond 0-65535, 16-bit
grayscale with alpha (which Pillow decodes only to its high bytes).
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
        with _opened(path) as im:
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(f"{path}: expected at most {max_pixels:,} pixels, found {width}x{height} = "
                                 f"{width * height:,} (pass a larger max_pixels to allow it)")
            rawmodes = [_rawmode(tile.args) for tile in im.tile]  # load() empties the tiles
            with _strict_loading():
                im.load()
            return to_rgb(ImageOps.exif_transpose(im), _low_bytes(path, im.mode, rawmodes), str(path))
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(f"{path}: not readable (permission denied)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: expected an image, found a file Pillow does not recognise") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: expected an image of sane size, found {exc}") from None
    except Exception as exc:
        # Pillow reports damaged files with many exception types (OSError, SyntaxError, struct.error, ...).
        raise ImageError(f"{path}: expected a complete image, found a damaged one "
                         f"({type(exc).__name__}: {exc})") from None


def _opened(path: Path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _rawmode(args: object) -> str:
    return args if isinstance(args, str) else str(args[0])


def _other_byte_order(args: object) -> object:
    """A tile's decoder arguments with the unpacker of the other byte order (``RGB;16B`` <-> ``RGB;16L``)."""
    rawmode = _rawmode(args)
    swapped = rawmode[:-1] + {"B": "L", "L": "B"}[rawmode[-1]]
    return swapped if isinstance(args, str) else (swapped, *args[1:])


def _low_bytes(path: Path, mode: str, rawmodes: list[str]) -> Image.Image | None:
    """For an image of 16-bit samples that Pillow decodes to their high bytes (``RGB;16B`` and the like), the
    same image decoded to the low bytes (the unpacker of the other byte order reads the other byte of each
    sample), upright; None for any other image (``mode`` and the tiles' ``rawmodes`` say which it is).
    :class:`ImageError` when Pillow has no such unpacker."""
    if mode.startswith("I") or not rawmodes or not all(r.endswith((";16B", ";16L")) for r in rawmodes):
        return None
    with _opened(path) as other:
        other.tile = [tile._replace(args=_other_byte_order(tile.args)) for tile in other.tile]
        try:
            with _strict_loading():
                other.load()
        except ValueError:
            raise ImageError(f"{path}: {rawmodes[0].split(';')[0]} with 16 bits per sample cannot be read whole "
                             f"here; save it with 8 bits per sample (or as 16-bit grayscale)") from None
        return ImageOps.exif_transpose(other)


def _to_8_bits(levels: np.ndarray, top: float) -> np.ndarray:
    return np.rint(levels.astype(np.float64) * (255.0 / top)).astype(np.uint8)


def _gray_levels(im: Image.Image, what: str) -> np.ndarray:
    """8-bit levels of a 32-bit float image (values in [0, 1]) or an integer image of 16-bit levels."""
    values = np.asarray(im)
    if im.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            found = "NaN or infinite values" if not np.isfinite(values).all() else \
                f"values in [{values.min():g}, {values.max():g}]"
            raise ImageError(f"{what}: expected a float image with values in [0, 1], found {found}")
        return _to_8_bits(values, 1.0)
    if values.min() < 0 or values.max() > 65535:
        raise ImageError(f"{what}: expected 16-bit levels 0-65535 in an integer image, found "
                         f"[{values.min()}, {values.max()}]")
    return _to_8_bits(values, 65535.0)


def to_rgb(im: Image.Image, low: Image.Image | None = None, what: str = "image") -> Image.Image:
    """``im`` as 8-bit RGB: alpha composited on white; samples of more than 8 bits scaled to 8 (see the module
    docstring; ``low``: the low bytes of 16-bit samples that Pillow decoded to their high bytes in ``im``).
    Raises :class:`ImageError` (naming ``what``) for values that hold no picture in a known range."""
    if im.mode in ("F", "I") or im.mode.startswith("I;16"):
        return Image.fromarray(_gray_levels(im, what), "L").convert("RGB")
    if low is not None:
        levels = np.asarray(im).astype(np.uint16) * 256 + np.asarray(low)
        im = Image.fromarray(_to_8_bits(levels, 65535.0), im.mode)
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
