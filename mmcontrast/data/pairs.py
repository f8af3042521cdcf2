"""Image-text pairs through Hugging Face ``datasets``.

Two sources:

* a local folder in the ``imagefolder`` convention: ``PATH/SPLIT/metadata.jsonl`` (or
  ``metadata.csv``) with a ``file_name`` column relative to that folder and a caption
  column (a string or a list of strings per image); a folder holding ``metadata.*``
  directly is one split;
* any ``datasets.load_dataset`` name or path, with configurable columns; images may be
  paths, bytes or ``datasets.Image`` features;
* webdataset tar shards (``webdataset.py``): a folder of ``.tar`` files, a glob or a brace
  pattern; columns are the members' extensions (``jpg``/``png``..., ``txt``, ``json``).

``data.streaming: true`` reads the training split with :func:`open_stream` instead (see
``streaming.py``); a streamed source's evaluation split is read through the stream too.
A caption column may name a field inside a column: ``json.text``.

A caption is a string or a list of strings. Rows without one (``empty caption``) or
whose caption is another JSON type (``caption not text``: a number, an object, a list
holding one) are dropped when the table is loaded, counted and named in ``skipped``;
images are decoded lazily, and one that is missing or unreadable is skipped when it is
met. A metadata line that is not UTF-8 or not JSON stops with an error naming the file and
line (``metadata.py``).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from mmcontrast.config import DataConfig
from mmcontrast.data.metadata import load_metadata
from mmcontrast.data.skips import Skips, image_name
from mmcontrast.data.webdataset import (
    IMAGE_EXTENSIONS,
    column_value,
    is_webdataset,
    shard_files,
)

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
KEY_BLOCK = 1024  # rows read at a time by PairTable.image_keys


@dataclass
class PairTable:
    """A ``datasets.Dataset`` of image-text rows plus how to read them."""

    dataset: datasets.Dataset
    image_column: str
    caption_column: str
    base_dir: Path | None = None  # local folders: image paths are relative to it
    skipped: Skips = field(default_factory=Skips)  # rows dropped at load, by reason and name
    source: str = ""
    id_column: str | None = None  # rows with equal values are positives of each other
    group_column: str | None = None  # retrieval evaluation: metrics also per value of it

    def column_names(self) -> list[str]:
        """The split's columns (a field of one, ``json.lang``, is read through its column)."""
        return list(self.dataset.features or {}) or list(self.dataset.column_names or [])

    def require_column(self, key: str, column: str | None, fix: str = "") -> None:
        """Raise a clear error when the setting ``key`` names a ``column`` (or a field of one,
        ``json.lang``) the split lacks; ``fix`` says what to do. Nothing when it is None."""
        if column is None:
            return
        names = self.column_names()
        if column not in names and column.split(".")[0] not in names:
            raise ValueError(
                f"{key} {column!r} not found in {self.source} (columns: {', '.join(names)})"
                + (f"; {fix}" if fix else "")
            )

    def check_id_column(self) -> None:
        """Raise a clear error when ``id_column`` is set but the split has no such column."""
        self.require_column(
            "data.id_column",
            self.id_column,
            "name the column holding each row's image id or label, or unset data.id_column to "
            "make every row its own positive",
        )

    def check_group_column(self) -> None:
        """Raise a clear error when ``group_column`` is set but the split has no such column."""
        self.require_column(
            "data.group_column",
            self.group_column,
            "name the column holding each row's group (e.g. its captions' language), or unset "
            "data.group_column (--group-column) to score the split as a whole only",
        )

    def row_value(self, row: dict[str, Any], column: str) -> Any:
        """The value of ``column`` (or of a field inside one, ``json.lang``) in a row already
        read; None when the cell is empty (missing, or NaN: an empty csv cell)."""
        value = column_value(row, column)
        return None if value is None or _is_nan(value) else value

    def row_id(self, row: dict[str, Any]) -> Any:
        """The value of ``id_column`` in a row (None without one, or when the cell is empty)."""
        if self.id_column is None:
            return None
        return self.row_value(row, self.id_column)

    def group_values(self, rows: list[int]) -> list[Hashable | None]:
        """The ``group_column`` value of each of ``rows`` (None for an empty cell).

        The column is read once, not row by row. A blank string is an empty cell.

        Raises:
            ValueError: ``group_column`` is unset or not a column of the split, or a cell holds
                a list or a mapping (a row is one group: one image, captions of one language).
        """
        if self.group_column is None:
            raise ValueError("group_values needs a group_column")
        self.check_group_column()
        head = self.group_column.split(".")[0]
        head = self.group_column if self.group_column in self.column_names() else head
        cells = self.dataset.select_columns([head]).to_list()
        values: list[Hashable | None] = []
        for row in rows:
            value = self.row_value(cells[row], self.group_column)
            if isinstance(value, str) and not value.strip():
                value = None
            if not isinstance(value, Hashable):
                raise ValueError(
                    f"data.group_column {self.group_column!r}: row {row} of {self.source} holds "
                    f"{value!r}; each row needs one value (one group per row: an image and "
                    "captions of one language), so give an image one row per language"
                )
            values.append(value)
        return values

    def image_keys(self, rows: list[int]) -> list[Hashable | None]:
        """Who each of ``rows``' images is: its file path, or a digest of its bytes (None when
        neither is known, as for a decoded picture). Rows with equal keys hold one image, as
        a table with one caption per row (COCO's five rows per image) has.

        The column is read undecoded, a block of rows at a time (encoded images can be
        larger than memory all together).
        """
        column = self.dataset.select_columns([self.image_column])
        feature = (column.features or {}).get(self.image_column)
        if isinstance(feature, datasets.Image) and feature.decode:
            column = column.cast_column(self.image_column, datasets.Image(decode=False))
        keys: list[Hashable | None] = []
        block: tuple[int, list[Any]] = (-1, [])
        for row in rows:
            start = row - row % KEY_BLOCK
            if block[0] != start:
                block = (start, column[start : start + KEY_BLOCK][self.image_column])
            value = block[1][row - start]
            if isinstance(value, dict):  # datasets.Image undecoded: {"bytes", "path"}
                value = value.get("bytes") or value.get("path")
            if isinstance(value, bytes | bytearray):
                keys.append(("bytes", hashlib.sha256(value).hexdigest()))
            elif isinstance(value, str) and value:
                path = self.base_dir / value if self.base_dir is not None else Path(value)
                keys.append(("path", os.path.normpath(path)))
            else:
                keys.append(None)
        return keys

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, index: int) -> Any:
        """The raw image value of a row (path, bytes or dict), ready for ``load_image``."""
        return self.row_image(self.dataset[index])

    def captions(self, index: int) -> list[str]:
        return self.row_captions(self.dataset[index])

    def row_image(self, row: dict[str, Any]) -> Any:
        """:meth:`image` of a row already read (e.g. from a stream)."""
        value = row[self.image_column]
        if self.base_dir is not None and isinstance(value, str):
            return str(self.base_dir / value)
        return value

    def row_captions(self, row: dict[str, Any]) -> list[str]:
        return clean_captions(column_value(row, self.caption_column))

    def row_caption_problem(self, row: dict[str, Any]) -> str | None:
        """:func:`caption_problem` of a row already read (e.g. from a stream)."""
        return caption_problem(column_value(row, self.caption_column))

    def row_name(self, row: dict[str, Any], fallback: str) -> str:
        """How messages name a row: its image file, or its key in a tar shard; else ``fallback``."""
        if row.get("__key__") and row.get("__url__"):  # webdataset
            return f"{row['__key__']} in {row['__url__']}"
        return image_name(self.row_image(row)) or fallback


def clean_captions(value: Any) -> list[str]:
    """A row's captions as a list of non-empty, stripped strings."""
    values = value if isinstance(value, list | tuple) else [value]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def caption_problem(value: Any) -> str | None:
    """Why a caption value gives no caption, or None when it gives at least one.

    A caption is a string or a list of strings; None, NaN (an empty csv cell) and blank
    strings are no caption. ``"caption not text"``: a number, boolean or object, or a list
    holding one; ``"empty caption"``: nothing but blanks.
    """
    values = value if isinstance(value, list | tuple) else [value]
    if any(not (v is None or isinstance(v, str) or _is_nan(v)) for v in values):
        return "caption not text"
    return None if clean_captions(values) else "empty caption"


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def find_metadata(folder: Path, split: str) -> Path | None:
    """``folder/split/metadata.*``, or ``folder/metadata.*`` for a single-split folder."""
    for directory in (folder / split, folder):
        for name in METADATA_FILES:
            if (directory / name).is_file():
                return directory / name
    return None


def load_pairs(cfg: DataConfig, split: str, max_samples: int | None = None) -> PairTable:
    """Load one split of image-text pairs as described by the data config."""
    if cfg.streaming:
        return _materialise(cfg, split, max_samples)
    return _drop_rows_without_captions(_load_split(cfg, split, streaming=False), max_samples)


def open_stream(cfg: DataConfig, split: str) -> PairTable:
    """One split as a ``datasets.IterableDataset`` (``streaming=True``), images undecoded.

    The table's ``dataset`` is iterable only (no length, no indexing): ``streaming.py``
    reads it shard by shard. Same sources and column checks as :func:`load_pairs`.
    """
    return _load_split(cfg, split, streaming=True)


def _load_split(cfg: DataConfig, split: str, streaming: bool) -> PairTable:
    """The split from tar shards, an imagefolder or ``datasets``, streamed or not."""
    if not cfg.path:
        raise ValueError(
            "data.path is empty: give an imagefolder directory, tar shards or a datasets name"
        )
    folder = Path(cfg.path)
    if is_webdataset(cfg.path):
        return _load_webdataset(cfg, split, streaming)
    if folder.is_dir() and any(folder.glob("**/metadata.*")):
        return _load_imagefolder(folder, split, cfg, streaming)
    return _load_hub_or_script(cfg, split, streaming)


def _materialise(cfg: DataConfig, split: str, max_samples: int | None) -> PairTable:
    """A streamed source's split read into memory (evaluation): its first ``max_samples``
    rows with a caption, as :func:`load_pairs` keeps them."""
    stream = open_stream(cfg, split)
    rows: list[dict[str, Any]] = []
    dropped = Skips()
    for number, row in enumerate(stream.dataset):
        problem = stream.row_caption_problem(row)
        if problem is not None:
            name = stream.row_name(row, f"row {number} of {stream.source}")
            dropped.add(problem, name, f"{stream.source} row {number}")
            continue
        rows.append(row)
        if max_samples is not None and len(rows) >= max_samples:
            break
    if not rows:
        raise ValueError(f"split {split!r} of {stream.source} has no row with a caption")
    table = PairTable(
        datasets.Dataset.from_list(rows, features=stream.dataset.features),  # mixed types: Json
        stream.image_column,
        stream.caption_column,
        base_dir=stream.base_dir,
        source=stream.source,
        skipped=dropped,
        id_column=stream.id_column,
        group_column=stream.group_column,
    )
    return table


def _load_webdataset(cfg: DataConfig, split: str, streaming: bool) -> PairTable:
    files = shard_files(cfg.path, split)
    dataset = datasets.load_dataset(
        "webdataset", data_files={split: files}, split=split, streaming=streaming
    )
    columns = list(dataset.features or {})
    image_column, caption_column = cfg.image_column, cfg.caption_column
    defaults = DataConfig()
    # webdataset columns are extensions: the default names fall back to them
    if image_column == defaults.image_column and image_column not in columns:
        image_column = next((c for c in IMAGE_EXTENSIONS if c in columns), image_column)
    if caption_column == defaults.caption_column and caption_column not in columns:
        caption_column = "txt" if "txt" in columns else caption_column
    return _table(dataset, cfg, cfg.path, columns=(image_column, caption_column))


def _table(
    dataset: Any,
    cfg: DataConfig,
    source: str,
    base_dir: Path | None = None,
    file_column: bool = False,
    columns: tuple[str, str] | None = None,
) -> PairTable:
    """Check the columns of a loaded split and wrap it; images are left undecoded."""
    image_column, caption_column = columns or (cfg.image_column, cfg.caption_column)
    names = list(dataset.features or {}) or list(dataset.column_names or [])
    if not names and isinstance(dataset, datasets.IterableDataset):  # features unknown: peek
        names = list(next(iter(dataset.take(1)), {}))
    if file_column and image_column not in names:
        image_column = "file_name"
    _check_columns(names, [image_column, caption_column], source)
    if "." in caption_column and caption_column not in names:  # a field inside a column
        first = next(
            iter(dataset.take(1) if isinstance(dataset, datasets.IterableDataset) else dataset),
            None,
        )
        if first is not None and column_value(first, caption_column) is None:
            head = caption_column.split(".")[0]
            fields = list(first[head]) if isinstance(first[head], dict) else []
            raise ValueError(
                f"caption column {caption_column!r}: the first row of {source} has no such field "
                f"(fields of {head!r}: {', '.join(fields) or 'none, it is not a mapping'})"
            )
    if isinstance((dataset.features or {}).get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    return PairTable(
        dataset, image_column, caption_column, base_dir=base_dir, source=source,
        id_column=cfg.id_column, group_column=cfg.group_column,
    )  # fmt: skip


def find_split_metadata(
    folder: Path, split: str, fix: str = "set data.train_split / data.eval_split"
) -> Path:
    """A split's metadata file in an imagefolder, or an error listing the splits found.

    ``fix`` says how the caller picks another split (a config key or a flag).
    """
    metadata = find_metadata(folder, split)
    if metadata is None:
        splits = sorted(p.parent.name for p in folder.glob("*/metadata.*"))
        raise ValueError(
            f"no metadata.jsonl or metadata.csv for split {split!r} in {str(folder)!r} "
            f"(splits found: {', '.join(splits) or 'none'}); {fix}"
        )
    return metadata


def _load_imagefolder(folder: Path, split: str, cfg: DataConfig, streaming: bool) -> PairTable:
    metadata = find_split_metadata(folder, split)
    dataset = load_metadata(metadata, streaming)
    return _table(dataset, cfg, str(metadata), base_dir=metadata.parent, file_column=True)


def load_dataset_split(cfg: DataConfig, split: str, expected: str, streaming: bool = False) -> Any:
    """``datasets.load_dataset(cfg.path, cfg.name, split=split)``; failures say what
    ``data.path`` may be (``expected``)."""
    try:
        return datasets.load_dataset(cfg.path, cfg.name, split=split, streaming=streaming)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
        raise ValueError(
            f"cannot load dataset {cfg.path!r} split {split!r}: {err.__class__.__name__}: {err}. "
            f"data.path must be {expected}"
        ) from None


def _load_hub_or_script(cfg: DataConfig, split: str, streaming: bool) -> PairTable:
    dataset = load_dataset_split(
        cfg,
        split,
        "an imagefolder directory (with metadata.jsonl), tar shards or a datasets name",
        streaming=streaming,
    )
    return _table(dataset, cfg, cfg.path)


def _check_columns(names: list[str], columns: list[str], source: str) -> None:
    for column in columns:
        if column not in names and column.split(".")[0] not in names:
            raise ValueError(
                f"column {column!r} not found in {source} (columns: {', '.join(names)}); "
                f"set data.image_column / data.caption_column (mmcontrast eval: "
                "--image-column / --caption-column)"
            )


def _drop_rows_without_captions(table: PairTable, max_samples: int | None) -> PairTable:
    column = table.caption_column
    if column in table.dataset.column_names:
        captions = table.dataset[column]
    else:  # a field inside a column (json.text)
        head = column.split(".")[0]
        captions = [column_value({head: v}, column) for v in table.dataset[head]]
    problems = [caption_problem(value) for value in captions]
    keep = [i for i, problem in enumerate(problems) if problem is None]
    dropped = [i for i, problem in enumerate(problems) if problem is not None]
    if dropped:
        for i, row in zip(dropped, table.dataset.select(dropped), strict=True):
            name = table.row_name(row, f"row {i} of {table.source}")
            table.skipped.add(str(problems[i]), name, f"{table.source} row {i}")
    if max_samples is not None:
        keep = keep[:max_samples]
    if dropped or len(keep) < len(captions):
        table.dataset = table.dataset.select(keep)
    return table
