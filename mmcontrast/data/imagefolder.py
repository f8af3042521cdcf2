"""Write datasets in the Hugging Face ``imagefolder`` layout.

The layout is the simplest way to bring your own image-text data::

    output_dir/
        train/
            metadata.jsonl      # one JSON object per line: {"file_name": "0001.png", "text": ...}
            0001.png
            ...
        test/
            metadata.jsonl
            ...

Every metadata row has a ``file_name`` (relative to the split directory) plus any other
columns, e.g. ``"text"`` as a caption string or a list of captions. Load it back with
``datasets.load_dataset("imagefolder", data_dir="output_dir/train", split="train")``.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["METADATA_FILENAME", "write_imagefolder"]

METADATA_FILENAME = "metadata.jsonl"

_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def _to_pil(image: Any) -> Image.Image:
    """Turn a PIL image, a file path or encoded bytes into a PIL image."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(image)))
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            opened.load()
            return opened
    raise TypeError(f"'image' must be a PIL.Image, a path or bytes, got {type(image).__name__}")


def _file_stem(record: Mapping[str, Any], index: int) -> str:
    """File name (without extension) for a record: its ``file_name`` if given, else the index."""
    name = record.get("file_name")
    if name is None:
        return f"{index:06d}"
    stem = _UNSAFE_CHARS.sub("_", Path(str(name)).stem).strip("._")
    if not stem:
        raise ValueError(f"record {index} has an unusable file_name: {name!r}")
    return stem


def write_imagefolder(
    records: Iterable[Mapping[str, Any]],
    output_dir: str | Path,
    split: str,
    overwrite: bool = False,
) -> Path:
    """Write records as one split of an ``imagefolder`` dataset.

    Args:
        records: Dicts with an ``"image"`` (PIL image, path or encoded bytes) and any other
            JSON-serialisable columns. An optional ``"file_name"`` picks the image's name
            (its extension is replaced by ``.png``); otherwise images are numbered.
        output_dir: Dataset root; the split is written to ``output_dir/split``.
        split: Split name, e.g. ``"train"`` or ``"test"``.
        overwrite: Delete an existing split directory first instead of raising.

    Returns:
        The split directory.

    Raises:
        FileExistsError: If the split already has a metadata file and ``overwrite`` is False.
        ValueError: If a record lacks an image or two records map to the same file name.
    """
    if not split or Path(split).name != split:
        raise ValueError(f"split must be a plain directory name, got {split!r}")
    split_dir = Path(output_dir) / split
    if split_dir.exists():
        if overwrite:
            shutil.rmtree(split_dir)
        elif (split_dir / METADATA_FILENAME).exists():
            raise FileExistsError(f"{split_dir} already holds a dataset; pass overwrite=True")
    split_dir.mkdir(parents=True, exist_ok=True)

    seen: set[str] = set()
    tmp_path = split_dir / (METADATA_FILENAME + ".tmp")
    with tmp_path.open("w", encoding="utf-8") as metadata:
        for index, record in enumerate(records):
            if "image" not in record:
                raise ValueError(f"record {index} has no 'image'")
            file_name = _file_stem(record, index) + ".png"
            if file_name in seen:
                raise ValueError(f"duplicate file_name {file_name!r} (record {index})")
            seen.add(file_name)

            image = _to_pil(record["image"])
            if image.mode not in _PNG_MODES:
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            image.save(split_dir / file_name, format="PNG")

            row = {"file_name": file_name}
            row.update((k, v) for k, v in record.items() if k not in ("image", "file_name"))
            metadata.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp_path.replace(split_dir / METADATA_FILENAME)
    return split_dir
