"""Decoding images from whatever a dataset holds: a path, bytes, a ``datasets`` dict, a PIL image."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageFile, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is a bad sample, not a half-grey image


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is a short key for the end-of-run summary."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def load_image(value: Any) -> Image.Image:
    """Return an RGB PIL image, or raise ``BadSample`` saying why it could not be read."""
    if isinstance(value, Image.Image):
        image = value
    else:
        source: Any
        if isinstance(value, dict):  # datasets.Image(decode=False): {"path": ..., "bytes": ...}
            source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        elif isinstance(value, bytes | bytearray):
            source = io.BytesIO(value)
        else:
            source = value
        if source is None:
            raise BadSample("missing image", "no path or bytes")
        try:
            image = Image.open(source)
            image.load()
        except FileNotFoundError:
            raise BadSample("missing image file", str(source)) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise BadSample(
                "unreadable image", f"{source if isinstance(source, str) else 'bytes'}: {err}"
            ) from None
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
