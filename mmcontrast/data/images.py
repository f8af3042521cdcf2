"""Decoding images from whatever a dataset holds: a path, bytes, a ``datasets`` dict, a PIL image.

Every image comes out as 8-bit RGB, or :class:`BadSample` says why it cannot be used; the
datasets skip and count such samples (``skips.py``). Reasons:

* ``missing image`` / ``missing image file``: no path or bytes, or no file at the path;
* ``unreadable image``: not an image, truncated, or undecodable;
* ``image too large``: more pixels than :func:`set_max_image_pixels` allows (a
  decompression bomb: a small file that decodes to gigabytes);
* ``unsupported image mode``: a pixel format with no RGB conversion.

Conversion to RGB. Transparent images (RGBA, LA, palettes with a transparent colour) are
composited over white. High-bit-depth greyscale is scaled to 8 bits by the range of its
mode, not clipped (a plain ``convert("RGB")`` turns a mid-grey 16-bit image white):

* ``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` (16-bit, e.g. 16-bit PNGs): ``v / 257``;
* ``I`` (32-bit integers; some readers give 16-bit PNGs this mode): as 8-bit when the
  image's maximum is at most 255, as 16-bit (``v / 257``) when it is at most 65535, else
  stretched from 0 to its maximum; negative values are 0;
* ``F`` (32-bit float): ``v * 255`` when every value lies in [0, 1], else clipped to
  [0, 255]; NaN and infinities are 0.

Everything else (CMYK, YCbCr, 1-bit, 8-bit greyscale...) goes through PIL's own conversion.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is a bad sample, not a half-grey image

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own: about 9459 x 9459, 0.25 GiB as RGB
MAX_IMAGE_PIXELS_ENV = "MMCONTRAST_MAX_IMAGE_PIXELS"  # how spawned worker processes learn it
_HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is a short key for the end-of-run summary."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def set_max_image_pixels(limit: int | None) -> None:
    """Skip images with more than ``limit`` pixels as ``image too large``; None: no limit.

    The limit protects training and evaluation from decompression bombs, and from
    giant scans that would take a worker's memory. It applies to this process and to the
    processes it starts afterwards: forked DataLoader workers inherit it, and spawned ones
    read it from the ``MMCONTRAST_MAX_IMAGE_PIXELS`` environment variable when they import
    this module (set it before the first loader starts workers). Pillow's own limit
    (``Image.MAX_IMAGE_PIXELS``) is set to the same value, so Pillow neither warns below it
    nor refuses above it for code that opens images elsewhere in the process.

    Args:
        limit: The most pixels (width x height) an image may have, or None for no limit.
            The default is Pillow's, :data:`DEFAULT_MAX_IMAGE_PIXELS`.

    Raises:
        ValueError: ``limit`` is not a positive integer or None.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(
            f"the image pixel limit must be a positive integer or null (no limit), got {limit!r}"
        )
    global _max_pixels
    _max_pixels = limit
    Image.MAX_IMAGE_PIXELS = limit
    os.environ[MAX_IMAGE_PIXELS_ENV] = "none" if limit is None else str(limit)


def max_image_pixels() -> int | None:
    """The limit :func:`set_max_image_pixels` set (None: no limit)."""
    return _max_pixels


def _limit_from_environment() -> int | None:
    """The limit a parent process set (``MMCONTRAST_MAX_IMAGE_PIXELS``), else the default."""
    value = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip().lower()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    if value in ("none", "null"):
        limit = None
    elif value.isdigit() and int(value) > 0:
        limit = int(value)
    else:
        raise ValueError(
            f"{MAX_IMAGE_PIXELS_ENV}={value!r}: give a positive number of pixels or 'none'"
        )
    Image.MAX_IMAGE_PIXELS = limit
    return limit


_max_pixels: int | None = _limit_from_environment()


def load_image(value: Any) -> Image.Image:
    """Return an 8-bit RGB PIL image, or raise ``BadSample`` saying why it could not be read."""
    if isinstance(value, Image.Image):
        _check_size(value, "image")
        return to_rgb(value)
    source: Any
    if isinstance(value, dict):  # datasets.Image(decode=False): {"path": ..., "bytes": ...}
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    elif isinstance(value, bytes | bytearray):
        source = io.BytesIO(value)
    else:
        source = value
    if source is None:
        raise BadSample("missing image", "no path or bytes")
    where = source if isinstance(source, str) else "bytes"
    try:
        with warnings.catch_warnings():  # Pillow warns between its limit and twice it
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            _check_size(image, where)
            image.load()
    except FileNotFoundError:
        raise BadSample("missing image file", str(source)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadSample("image too large", f"{where}: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadSample("unreadable image", f"{where}: {err}") from None
    return to_rgb(image)


def _check_size(image: Image.Image, where: Any) -> None:
    width, height = image.size
    if _max_pixels is not None and width * height > _max_pixels:
        raise BadSample(
            "image too large",
            f"{where}: {width} x {height} = {width * height} pixels, over the limit of "
            f"{_max_pixels} (data.max_image_pixels)",
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: transparency over white, high bit depths scaled (module doc).

    Raises:
        BadSample: ``unsupported image mode`` when PIL has no conversion to RGB.
    """
    if image.mode == "RGB":
        return image
    try:
        if image.mode in _HIGH_BIT_DEPTH:
            return Image.fromarray(_to_8bit(image)).convert("RGB")
        if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise BadSample("unsupported image mode", f"{image.mode}: {err}") from None


def _to_8bit(image: Image.Image) -> np.ndarray:
    """The pixels of a high-bit-depth greyscale image as uint8, by the rules of its mode."""
    values = np.asarray(image).astype(np.float32)
    if image.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
    elif image.mode == "I":
        top = float(values.max()) if values.size else 0.0
        if top > 65535:
            values = values * (255.0 / top)
        elif top > 255:
            values = values / 257.0
    else:  # I;16 and its byte orders
        values = values / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
