"""Image-text pairs through Hugging Face ``datasets``.

Two sources:

* a local folder in the ``imagefolder`` convention: ``PATH/SPLIT/metadata.jsonl`` (or
  ``metadata.csv``) with a ``file_name`` column relative to that folder and a caption
  column (a string or a list of strings per image); a folder holding ``metadata.*``
  directly is one split;
* any ``datasets.load_dataset`` name or path, with configurable columns; images may be
  paths, bytes or ``datasets.Image`` features.

Rows without a usable caption are dropped when the table is loaded and counted; images
are decoded lazily, and one that is missing or unreadable is skipped when it is met.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from mmcontrast.config import DataConfig

METADATA_FILES = ("metadata.jsonl", "metadata.csv")


@dataclass
class PairTable:
    """A ``datasets.Dataset`` of image-text rows plus how to read them."""

    dataset: datasets.Dataset
    image_column: str
    caption_column: str
    base_dir: Path | None = None  # local folders: image paths are relative to it
    skipped: Counter = field(default_factory=Counter)  # rows dropped at load, by reason
    source: str = ""

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, index: int) -> Any:
        """The raw image value of a row (path, bytes or dict), ready for ``load_image``."""
        value = self.dataset[index][self.image_column]
        if self.base_dir is not None and isinstance(value, str):
            return str(self.base_dir / value)
        return value

    def captions(self, index: int) -> list[str]:
        return clean_captions(self.dataset[index][self.caption_column])


def clean_captions(value: Any) -> list[str]:
    """A row's captions as a list of non-empty, stripped strings."""
    values = value if isinstance(value, list | tuple) else [value]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def find_metadata(folder: Path, split: str) -> Path | None:
    """``folder/split/metadata.*``, or ``folder/metadata.*`` for a single-split folder."""
    for directory in (folder / split, folder):
        for name in METADATA_FILES:
            if (directory / name).is_file():
                return directory / name
    return None


def load_pairs(cfg: DataConfig, split: str, max_samples: int | None = None) -> PairTable:
    """Load one split of image-text pairs as described by the data config."""
    if not cfg.path:
        raise ValueError("data.path is empty: give an imagefolder directory or a datasets name")
    folder = Path(cfg.path)
    if folder.is_dir() and any(folder.glob("**/metadata.*")):
        table = _load_imagefolder(folder, split, cfg)
    else:
        table = _load_hub_or_script(cfg, split)
    return _drop_empty_captions(table, max_samples)


def _load_imagefolder(folder: Path, split: str, cfg: DataConfig) -> PairTable:
    metadata = find_metadata(folder, split)
    if metadata is None:
        splits = sorted(p.parent.name for p in folder.glob("*/metadata.*"))
        raise ValueError(
            f"no metadata.jsonl or metadata.csv for split {split!r} in {str(folder)!r} "
            f"(splits found: {', '.join(splits) or 'none'}); set data.train_split / data.eval_split"
        )
    builder = "json" if metadata.suffix == ".jsonl" else "csv"
    dataset = datasets.load_dataset(builder, data_files=str(metadata), split="train")
    image_column = cfg.image_column if cfg.image_column in dataset.column_names else "file_name"
    _check_columns(dataset, [image_column, cfg.caption_column], str(metadata))
    return PairTable(
        dataset, image_column, cfg.caption_column, base_dir=metadata.parent, source=str(metadata)
    )


def load_dataset_split(cfg: DataConfig, split: str, expected: str) -> datasets.Dataset:
    """``datasets.load_dataset(cfg.path, cfg.name, split=split)``; failures say what
    ``data.path`` may be (``expected``)."""
    try:
        return datasets.load_dataset(cfg.path, cfg.name, split=split)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
        raise ValueError(
            f"cannot load dataset {cfg.path!r} split {split!r}: {err.__class__.__name__}: {err}. "
            f"data.path must be {expected}"
        ) from None


def _load_hub_or_script(cfg: DataConfig, split: str) -> PairTable:
    dataset = load_dataset_split(
        cfg, split, "an imagefolder directory (with metadata.jsonl) or a datasets name/path"
    )
    _check_columns(dataset, [cfg.image_column, cfg.caption_column], cfg.path)
    if isinstance(dataset.features.get(cfg.image_column), datasets.Image):
        dataset = dataset.cast_column(cfg.image_column, datasets.Image(decode=False))
    return PairTable(dataset, cfg.image_column, cfg.caption_column, source=cfg.path)


def _check_columns(dataset: datasets.Dataset, columns: list[str], source: str) -> None:
    for column in columns:
        if column not in dataset.column_names:
            raise ValueError(
                f"column {column!r} not found in {source} (columns: {', '.join(dataset.column_names)}); "
                f"set data.image_column / data.caption_column"
            )


def _drop_empty_captions(table: PairTable, max_samples: int | None) -> PairTable:
    captions = table.dataset[table.caption_column]
    keep = [i for i, value in enumerate(captions) if clean_captions(value)]
    dropped = len(captions) - len(keep)
    if max_samples is not None:
        keep = keep[:max_samples]
    if dropped or len(keep) < len(captions):
        table.dataset = table.dataset.select(keep)
    if dropped:
        table.skipped["empty caption"] += dropped
    return table
