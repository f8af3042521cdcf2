"""The collections :func:`~mmcontrast.search.embed.embed_collection` reads, row by row.

A collection is a fixed, ordered list of rows, each an image, the key that names it in the
output's metadata and at most one caption. Three kinds:

* an imagefolder (``metadata.jsonl`` / ``metadata.csv``, one split at a time), tar shards
  or a ``datasets`` name, read as the toolkit reads image-text pairs
  (:func:`~mmcontrast.data.pairs.load_pairs`): rows without a caption are skipped and
  counted at load. When the caption column is left at its default and the source has no
  such column (or ``caption_column=""``), every row is kept and none has a caption;
* a plain folder of images with no metadata: every image file under it, walked
  recursively in path order, keyed by its path relative to the folder;
* the built-in names of :func:`~mmcontrast.eval.data.resolve_data` (``emoji``).

The order of the rows is the same on every call over the same data, which is what lets an
interrupted embedding resume shard by shard.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from mmcontrast.config import DataConfig
from mmcontrast.data.metadata import load_metadata
from mmcontrast.data.pairs import (
    METADATA_FILES,
    PairTable,
    find_split_metadata,
    load_dataset_split,
    load_pairs,
)
from mmcontrast.data.skips import Skips, image_name
from mmcontrast.data.webdataset import is_webdataset
from mmcontrast.eval.data import resolve_data
from mmcontrast.models.locations import check_local_name

__all__ = ["IMAGE_SUFFIXES", "Collection", "Entry", "open_collection"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_SPLIT = "train"


@dataclass
class Entry:
    """One row: the raw image value (for ``load_image``), its metadata key, its caption."""

    image: Any
    key: str
    caption: str | None


@dataclass
class Collection(ABC):
    """Rows of images to embed, and what identifies them in the output's manifest.

    Attributes:
        source: How messages name the collection (a folder, a metadata file, a dataset).
        identity: Plain data naming the rows (kind, path, split, columns, row count): a
            rerun into the same output must read the same collection.
        captions: Whether rows carry a caption.
        skipped: Rows dropped when the collection was read (e.g. ``empty caption``).
    """

    source: str
    identity: dict[str, Any]
    captions: bool
    skipped: Skips

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def entry(self, row: int) -> Entry:
        """Row ``row`` (0-based, in the collection's fixed order)."""


@dataclass
class FileCollection(Collection):
    """Image files under a folder; ``files`` are POSIX paths relative to ``root``."""

    root: Path
    files: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def entry(self, row: int) -> Entry:
        name = self.files[row]
        return Entry(str(self.root / name), name, None)


@dataclass
class TableCollection(Collection):
    """The rows of a :class:`PairTable`; captions are read only when ``captions`` is set."""

    table: PairTable

    def __len__(self) -> int:
        return len(self.table)

    def entry(self, row: int) -> Entry:
        table = self.table
        values = table.dataset[row]
        caption = table.row_captions(values)[0] if self.captions else None
        return Entry(table.row_image(values), _key(values, table.image_column, row), caption)


def _key(values: dict[str, Any], image_column: str, row: int) -> str:
    """A row's metadata key: its tar key, its file name as the metadata gives it, or its number."""
    if values.get("__key__"):
        return str(values["__key__"])
    value = values[image_column]
    if isinstance(value, str) and value:
        return value
    return image_name(value) or str(row)


def open_collection(
    data: str | Path,
    split: str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> Collection:
    """Read ``data`` as a collection (module docstring for the kinds).

    Args:
        data: A folder (imagefolder, tar shards or plain images), a ``datasets`` name or a
            built-in name.
        split: The split of an imagefolder, tar shards or dataset (default ``train``; a
            folder holding its metadata directly is one split); for a plain folder, a
            sub-folder to read instead of the whole folder.
        image_column: The image column (default ``image``; imagefolders fall back to
            ``file_name``).
        caption_column: The caption column (default ``text``, optional); ``""`` reads no
            captions.

    Raises:
        ValueError: A missing local path, an unknown dataset, a missing column or split;
            the message says which and what to pass.
    """
    text = str(data)
    folder = Path(text).expanduser()
    if folder.is_dir() and not is_webdataset(text) and not _has_metadata(folder):
        return _file_collection(folder, split)
    if not is_webdataset(text):  # a shard pattern is not a path that exists as written
        check_local_name(text)
    resolved = resolve_data(text, split or DEFAULT_SPLIT, image_column=image_column)
    config, split = resolved.config, resolved.split
    if caption_column:
        config.caption_column = caption_column
        return _pairs(config, split)
    if caption_column is None and is_webdataset(config.path):
        return _pairs(config, split)  # load_pairs falls back to the .txt members
    names, base_dir, source, dataset = _columns(config, split)
    if caption_column is None and config.caption_column.split(".")[0] in names:
        return _pairs(config, split)
    return _images_only(dataset, names, config, split, base_dir, source)


def _has_metadata(folder: Path) -> bool:
    return any(path.name in METADATA_FILES for path in folder.glob("**/metadata.*"))


def _identity(kind: str, config: DataConfig, split: str, rows: int, caption: str | None) -> dict:
    path = Path(config.path).expanduser()
    return {
        "kind": kind,
        "path": str(path.resolve()) if path.exists() else config.path,
        "name": config.name,
        "split": split,
        "image_column": config.image_column,
        "caption_column": caption,
        "rows": rows,
    }


def _metadata_digest(identity: dict[str, Any], source: str) -> dict[str, Any]:
    """``identity`` with the SHA-256 of the metadata file ``source`` names, when it is one (an
    edited metadata file with as many rows is other data)."""
    path = Path(source)
    if path.name in METADATA_FILES and path.is_file():
        identity["metadata"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return identity


def _pairs(config: DataConfig, split: str) -> TableCollection:
    table = load_pairs(config, split)
    kind = "webdataset" if is_webdataset(config.path) else "pairs"
    identity = _identity(kind, config, split, len(table), table.caption_column)
    identity["image_column"] = table.image_column
    _metadata_digest(identity, table.source)
    return TableCollection(table.source, identity, True, table.skipped, table)


def _columns(config: DataConfig, split: str) -> tuple[list[str], Path | None, str, Any]:
    """The column names, image base folder, source name and dataset of a split."""
    folder = Path(config.path).expanduser()
    if folder.is_dir():
        metadata = find_split_metadata(folder, split, "pass split (--split)")
        dataset = load_metadata(metadata)
        return list(dataset.column_names), metadata.parent, str(metadata), dataset
    dataset = load_dataset_split(
        config, split, "an imagefolder directory, a folder of images or a datasets name"
    )
    return list(dataset.column_names), None, config.path, dataset


def _images_only(
    dataset: Any,
    names: list[str],
    config: DataConfig,
    split: str,
    base_dir: Path | None,
    source: str,
) -> TableCollection:
    """Every row of a split with no caption column: images only."""
    column = config.image_column
    if base_dir is not None and column not in names:
        column = "file_name"
    if column not in names:
        raise ValueError(
            f"image column {column!r} not found in {source} (columns: {', '.join(names)}); "
            "pass image_column (--image-column)"
        )
    if isinstance((dataset.features or {}).get(column), datasets.Image):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    table = PairTable(dataset, column, "", base_dir=base_dir, source=source)
    config.image_column = column
    identity = _metadata_digest(_identity("images", config, split, len(table), None), source)
    return TableCollection(source, identity, False, Skips(), table)


def _file_collection(folder: Path, split: str | None) -> FileCollection:
    """Every image file under ``folder`` (or its ``split`` sub-folder), in path order."""
    root = folder
    if split is not None:
        root = folder / split
        if not root.is_dir():
            subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
            raise ValueError(
                f"{folder} has no {split!r} folder (folders: {', '.join(subfolders) or 'none'}); "
                "leave the split out to read every image under it"
            )
    files: list[str] = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        here = Path(directory).relative_to(root)
        files.extend(
            (here / name).as_posix()
            for name in names
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)
        )
    files.sort()
    listing = hashlib.sha256()  # a file added, removed, renamed or resized changes it
    for name in files:  # (not the mtime: a copied or checked-out folder is the same data)
        listing.update(f"{name}\0{(root / name).stat().st_size}\n".encode())
    identity = {
        "kind": "folder",
        "path": str(root.resolve()),
        "split": split,
        "rows": len(files),
        "files": listing.hexdigest(),
    }
    return FileCollection(str(root), identity, False, Skips(), root, files)
