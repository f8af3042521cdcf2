"""Image-text pairs as webdataset tar shards: finding a split's shards, and writing them.

A webdataset shard is a plain tar file whose members are grouped by key: ``KEY.jpg`` (or
``.png``, ``.webp``) holds the image, ``KEY.txt`` the caption, ``KEY.json`` any metadata.
``datasets`` reads shards with its ``webdataset`` builder (one column per extension),
streamed or not. ``data.path`` names the shards of a split in one of three ways::

    data/shards                      # a folder: data/shards/SPLIT/*.tar, else data/shards/*.tar
    data/shards/train-*.tar          # a glob
    data/shards/{split}-{00000..00031}.tar   # braces as webdataset writes them; {split} = the split
    https://host/shards/{split}-{00000..00031}.tar   # remote: braces only (no globbing)

``write_shards`` turns any image-text table (an imagefolder, a ``datasets`` source) into
shards, so a dataset too large to hold can be streamed.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from braceexpand import braceexpand
from PIL import Image
from webdataset import ShardWriter

from mmcontrast.data.images import BadSample, load_image

logger = logging.getLogger("mmcontrast")

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# tar headers of every member: fixed, so that writing the same rows twice gives the same bytes
_TAR_HEADER = {"user": "", "group": "", "mode": 0o644, "mtime": 0}


def is_webdataset(path: str) -> bool:
    """Whether ``data.path`` names tar shards (a pattern, a ``.tar`` file, or a folder of them)."""
    if path.endswith(".tar") or "{" in path and ".tar" in path:
        return True
    folder = Path(path)
    return folder.is_dir() and (any(folder.glob("*.tar")) or any(folder.glob("*/*.tar")))


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar a-001.tar a-002.tar``, as webdataset expands shard URLs.

    Backslashes are kept (Windows paths); a pattern with unbalanced braces is a plain name.
    """
    try:
        return list(braceexpand(pattern, escape=False))
    except ValueError:  # braceexpand.UnbalancedBracesError
        return [pattern]


def column_value(row: dict[str, Any], column: str) -> Any:
    """``row[column]``; ``a.b`` reads field ``b`` of column ``a`` (e.g. ``json.text``)."""
    if column in row or "." not in column:
        return row[column]
    value: Any = row
    for part in column.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def shard_files(path: str, split: str) -> list[str]:
    """The tar files of ``split`` under ``data.path``; a clear error when there are none."""
    pattern = path.replace("{split}", split)
    folder = Path(pattern)
    if folder.is_dir():
        files = sorted(folder.glob(f"{split}/*.tar"))
        if not files and list(folder.glob("*.tar")):
            files = sorted(folder.glob("*.tar"))
            logger.warning(
                "%s has no %s/ folder of shards: split %r reads the .tar files at its top, as "
                "every other split does", path, split, split,
            )  # fmt: skip
        if not files and split:
            splits = sorted({p.parent.name for p in folder.glob("*/*.tar")})
            raise ValueError(
                f"no tar shards for split {split!r} in {path!r} (splits with shards: "
                f"{', '.join(splits) or 'none'}); set data.train_split / data.eval_split"
            )
        found = [str(f) for f in files]
    elif "://" in pattern:  # remote shards (https://, hf://, s3:// ...): named, not globbed
        found = expand_braces(pattern)
    else:
        found = []
        for name in expand_braces(pattern):
            found.extend(sorted(glob.glob(name)))
    empty = [f for f in found if not _has_members(f)]
    if empty:  # datasets' webdataset builder cannot read an empty tar
        logger.warning("skipping %d empty tar shard(s): %s", len(empty), ", ".join(empty[:5]))
        found = [f for f in found if f not in empty]
    if not found:
        raise ValueError(
            f"no (non-empty) tar shards match {pattern!r} (data.path {path!r}, split {split!r}): "
            "give a folder of .tar files, a glob, or a brace pattern such as "
            "shards/{split}-{00000..00009}.tar"
        )
    return found


def _has_members(path: str) -> bool:
    if "://" in path:  # remote: not opened here
        return True
    with tarfile.open(path) as tar:
        return tar.next() is not None


def _encoded_image(value: Any, base_dir: Path | None) -> tuple[bytes, str]:
    """An image's encoded bytes and extension, re-encoded as PNG only when it has no file form."""
    if isinstance(value, dict):  # datasets.Image(decode=False)
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str):
        file = Path(value) if base_dir is None else base_dir / value
        if not file.is_file():
            raise BadSample("missing image file", str(file))
        ext = file.suffix.lower().lstrip(".").replace("jpeg", "jpg")
        if ext in IMAGE_EXTENSIONS:
            return file.read_bytes(), ext
        value = file.read_bytes()
    if isinstance(value, bytes | bytearray):
        try:
            with Image.open(io.BytesIO(value)) as image:
                ext = (image.format or "").lower().replace("jpeg", "jpg")
        except Image.DecompressionBombError as err:
            raise BadSample("image too large", str(err)) from None
        except (OSError, ValueError, SyntaxError) as err:
            raise BadSample("unreadable image", str(err)) from None
        if ext in IMAGE_EXTENSIONS:
            return bytes(value), ext
        value = Image.open(io.BytesIO(value))
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue(), "png"
    raise BadSample("missing image", f"no image in a {type(value).__name__}")


def _reencode(data: bytes, ext: str) -> bytes:
    """``data`` (any image) encoded as ``ext``: one image format, one column, per dataset."""
    image = load_image(data) if ext == "jpg" else Image.open(io.BytesIO(data))
    buffer = io.BytesIO()
    image.save(buffer, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext], quality=95)
    return buffer.getvalue()


def write_shards(
    rows: Iterator[dict[str, Any]],
    output_dir: str | Path,
    split: str,
    image_column: str,
    caption_column: str,
    shard_size: int = 1000,
    base_dir: Path | None = None,
) -> tuple[list[Path], Counter]:
    """Write rows as ``output_dir/SPLIT/SPLIT-00000.tar`` ... with ``shard_size`` samples each.

    Each sample gets the image's own encoded bytes (``KEY.jpg`` / ``.png`` ...; images in
    another format than the first one are re-encoded to it, since every extension becomes
    a column of its own when read back), its first caption as ``KEY.txt`` (read back with
    ``data.caption_column: txt``) and every other column, all captions included, as
    ``KEY.json`` (``data.caption_column: json.text`` for a list of captions in column
    ``text``). A missing or unreadable image is left out and counted. webdataset's
    ``ShardWriter`` writes the members (with fixed tar headers, so the same rows give the
    same bytes). Returns the shard paths and the counts of rows left out, by reason.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    folder = Path(output_dir) / split
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.tar"):
        old.unlink()
    shards: list[Path] = []
    skipped: Counter = Counter()
    writer: ShardWriter | None = None
    index, image_ext, reencoded = 0, "", 0
    for row in rows:
        try:
            data, ext = _encoded_image(row[image_column], base_dir)
            image_ext = image_ext or ext
            if ext != image_ext:
                data, reencoded = _reencode(data, image_ext), reencoded + 1
        except BadSample as bad:
            skipped[bad.reason] += 1
            continue
        if writer is None:  # opened at the first image: no rows, no (empty) shard
            prefix = str(folder.resolve() / split).replace("%", "%%")  # ShardWriter %-formats
            writer = ShardWriter(
                prefix + "-%05d.tar",
                maxcount=shard_size,
                maxsize=math.inf,  # shards split by sample count only
                post=lambda name: shards.append(folder / Path(name).name),
                verbose=0,
                encoder=False,  # members are bytes already
                **_TAR_HEADER,
            )
        captions = column_value(row, caption_column)
        first = captions[0] if isinstance(captions, list | tuple) and captions else captions
        meta = {k: v for k, v in row.items() if k != image_column and not k.startswith("__")}
        if isinstance(meta.get("json"), dict):  # shards of shards: their metadata, not nested
            meta = {**meta.pop("json"), **meta}
        writer.write(
            {
                "__key__": f"{index:09d}",
                image_ext: data,
                "txt": str(first or "").encode(),
                "json": json.dumps(meta, ensure_ascii=False, default=str).encode(),
            }
        )
        index += 1
    if writer is not None:
        writer.close()
    if reencoded:
        logger.warning(
            "%s: %d image(s) re-encoded as %s, the format of the first", split, reencoded, image_ext
        )
    return shards, skipped
