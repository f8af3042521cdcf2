"""Labelled image tables for the vision recipes, kNN and linear-probe evaluation.

Sources, picked by ``data.path``:

* ``fashion_mnist``: the built-in Fashion-MNIST (``fashion_mnist.py``), held in memory;
* a local folder in the ``imagefolder`` convention, ``PATH/SPLIT/metadata.jsonl`` (or
  ``.csv``) with ``file_name`` and a label column, or class subfolders
  ``PATH/SPLIT/CLASS/*.png``;
* any ``datasets.load_dataset`` name or path, with ``data.image_column`` and
  ``data.label_column``.

Labels may be a ``ClassLabel``, strings or integers. An eval split maps its labels with the
train split's ``class_names``. Rows without a label are dropped at load, counted and named
(``skips.py``); a metadata line that is not UTF-8 or not JSON stops with an error naming the
file and line (``metadata.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from PIL import Image
from torch import Tensor

from mmcontrast.config import DataConfig
from mmcontrast.data.metadata import load_metadata
from mmcontrast.data.pairs import find_metadata, load_dataset_split
from mmcontrast.data.skips import Skips, image_name

BUILTIN = "fashion_mnist"


@dataclass
class LabelledImages:
    """Images with one integer class each, backed by uint8 tensors or a ``datasets.Dataset``.

    Attributes:
        source: Where the table came from (for messages).
        class_names: Name of class ``c`` at index ``c``.
        targets: ``[N]`` long class indices.
        images: ``[N, H, W]`` or ``[N, C, H, W]`` uint8 images (in-memory backing).
        dataset: Rows holding ``image_column`` (datasets backing).
        image_column: The image column of ``dataset``.
        base_dir: Local folders: relative image paths are relative to it.
        skipped: Rows dropped at load, by reason and name.
    """

    source: str
    class_names: list[str]
    targets: Tensor
    images: Tensor | None = None
    dataset: datasets.Dataset | None = None
    image_column: str = "image"
    base_dir: Path | None = None
    skipped: Skips = field(default_factory=Skips)

    def __post_init__(self) -> None:
        if (self.images is None) == (self.dataset is None):
            raise ValueError("LabelledImages needs exactly one of images or dataset")
        count = len(self.images) if self.images is not None else len(self.dataset or [])
        if count != len(self.targets):
            raise ValueError(f"{count} images but {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> Any:
        """The raw image of a row (PIL image, path, bytes or dict), ready for ``load_image``."""
        if self.images is not None:
            array = self.images[index]
            if array.ndim == 3:
                array = array.squeeze(0) if array.shape[0] == 1 else array.permute(1, 2, 0)
            return Image.fromarray(array.numpy())
        assert self.dataset is not None
        value = self.dataset[index][self.image_column]
        if self.base_dir is not None and isinstance(value, str):
            return str(self.base_dir / value)
        return value

    def label(self, index: int) -> int:
        return int(self.targets[index])

    def labels(self) -> Tensor:
        """All labels, ``[N]`` long."""
        return self.targets


def readable_name(label: str) -> str:
    """A label as prompts say it: ``"face-smiling"`` -> ``"face smiling"``,
    ``"Food & Drink"`` -> ``"food and drink"``."""
    return label.replace("-", " ").replace("&", "and").replace("_", " ").lower()


def load_labelled(
    cfg: DataConfig,
    split: str,
    max_samples: int | None = None,
    class_names: list[str] | None = None,
) -> LabelledImages:
    """Load one split of labelled images as described by the data config.

    Args:
        cfg: The data config (``path``, ``name``, ``image_column``, ``label_column``).
        split: The split to load, e.g. ``cfg.train_split``.
        max_samples: Keep the first N usable rows.
        class_names: The train split's classes; labels are mapped to them by name.

    Raises:
        ValueError: A missing source, split or column, or labels outside ``class_names``.
    """
    if not cfg.path:
        raise ValueError(
            f"data.path is empty: give {BUILTIN!r}, an imagefolder directory or a datasets name"
        )
    if cfg.path == BUILTIN:
        return _load_fashion_mnist(split, max_samples, class_names)
    folder = Path(cfg.path)
    if folder.is_dir():
        dataset, image_column, label_column, base_dir, source = _load_folder(folder, split, cfg)
    else:
        dataset, image_column, label_column, source = _load_hub_or_script(cfg, split)
        base_dir = None
    targets, names, keep = _encode_labels(
        dataset[label_column], dataset.features[label_column], class_names, label_column, source
    )
    dataset = dataset.select_columns([image_column])
    if isinstance(dataset.features[image_column], datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    skipped = _without_label(dataset, image_column, keep, base_dir, source)
    if max_samples is not None:
        keep = keep[:max_samples]
    if len(keep) < len(dataset):
        dataset = dataset.select(keep)
    return LabelledImages(
        source,
        names,
        targets[torch.as_tensor(keep, dtype=torch.long)],
        dataset=dataset,
        image_column=image_column,
        base_dir=base_dir,
        skipped=skipped,
    )


def folder_class_labels(cfg: DataConfig, splits: Sequence[str]) -> list[str] | None:
    """The classes of a local labelled folder over those of ``splits`` it has, sorted: a
    class one split lacks (no test image of it) is still a class, as in a benchmark's
    class list. None for other sources and for integer labels. Reads labels only."""
    if not cfg.path or cfg.path == BUILTIN or not Path(cfg.path).is_dir():
        return None
    found: set[str] = set()
    for split in dict.fromkeys(splits):
        try:
            dataset, _, label_column, _, _ = _load_folder(Path(cfg.path), split, cfg)
        except ValueError:  # no such split here
            continue
        feature = dataset.features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            found.update(feature.names)
            continue
        present = [v for v in dataset[label_column] if not _missing(v)]
        if not all(isinstance(v, str) for v in present):
            return None
        found.update(present)
    return sorted(found) or None


def _without_label(
    dataset: datasets.Dataset,
    image_column: str,
    keep: list[int],
    base_dir: Path | None,
    source: str,
) -> Skips:
    """The rows not in ``keep``, named by their image file, as ``missing label`` skips."""
    skipped = Skips()
    if len(keep) == len(dataset):
        return skipped
    kept = set(keep)
    dropped = [i for i in range(len(dataset)) if i not in kept]
    for i, value in zip(dropped, dataset.select(dropped)[image_column], strict=True):
        name = image_name(value)
        if name is not None and base_dir is not None and isinstance(value, str):
            name = str(base_dir / value)
        skipped.add("missing label", name or f"row {i} of {source}", f"{source} row {i}")
    return skipped


def _load_fashion_mnist(
    split: str, max_samples: int | None, class_names: list[str] | None
) -> LabelledImages:
    from mmcontrast.data.fashion_mnist import CLASSES, load_fashion_mnist

    if class_names is not None and list(class_names) != CLASSES:
        raise ValueError(f"Fashion-MNIST classes are {CLASSES}, not {class_names}")
    images, labels = load_fashion_mnist(split)
    if max_samples is not None:
        images, labels = images[:max_samples], labels[:max_samples]
    return LabelledImages(f"{BUILTIN}/{split}", list(CLASSES), labels, images=images)


def _load_folder(
    folder: Path, split: str, cfg: DataConfig
) -> tuple[datasets.Dataset, str, str, Path, str]:
    """A metadata file (``file_name`` + label column) or class subfolders."""
    metadata = find_metadata(folder, split)
    if metadata is not None:
        dataset = load_metadata(metadata)
        image_column = cfg.image_column if cfg.image_column in dataset.column_names else "file_name"
        _check_column(dataset, image_column, str(metadata), "data.image_column")
        _check_column(dataset, cfg.label_column, str(metadata), "data.label_column")
        return dataset, image_column, cfg.label_column, metadata.parent, str(metadata)
    split_dir = folder / split
    if not split_dir.is_dir():
        splits = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise ValueError(
            f"no split {split!r} in {str(folder)!r}: expected {split}/metadata.jsonl or "
            f"{split}/CLASS/*.png (folders found: {', '.join(splits) or 'none'}); "
            f"set data.train_split / data.eval_split"
        )
    dataset = datasets.load_dataset(
        "imagefolder", data_dir=str(split_dir), split="train", drop_labels=False
    )
    label_column = cfg.label_column if cfg.label_column in dataset.column_names else "label"
    _check_column(dataset, label_column, str(split_dir), "data.label_column")
    return dataset, "image", label_column, split_dir, str(split_dir)


def _load_hub_or_script(cfg: DataConfig, split: str) -> tuple[datasets.Dataset, str, str, str]:
    dataset = load_dataset_split(
        cfg, split, f"{BUILTIN!r}, an imagefolder directory or a datasets name/path"
    )
    _check_column(dataset, cfg.image_column, cfg.path, "data.image_column")
    _check_column(dataset, cfg.label_column, cfg.path, "data.label_column")
    return dataset, cfg.image_column, cfg.label_column, cfg.path


def _check_column(dataset: datasets.Dataset, column: str, source: str, key: str) -> None:
    if column not in dataset.column_names:
        raise ValueError(
            f"column {column!r} not found in {source} "
            f"(columns: {', '.join(dataset.column_names)}); set {key}"
        )


def _encode_labels(
    values: Any,
    feature: Any,
    class_names: list[str] | None,
    column: str,
    source: str,
) -> tuple[Tensor, list[str], list[int]]:
    """``(targets [N], class_names, rows with a label)``; rows without one get target -1."""
    values = list(values)
    if isinstance(feature, datasets.ClassLabel):  # -1 marks a missing label
        values = [feature.names[v] if v is not None and v >= 0 else None for v in values]
        if class_names is None:
            class_names = list(feature.names)
    present = [v for v in values if not _missing(v)]
    if all(isinstance(v, str) for v in present):
        names = class_names if class_names is not None else sorted(set(present))
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(present) - set(index))
        if unknown:
            raise ValueError(
                f"labels {unknown[:10]} in column {column!r} of {source} are not among the "
                f"{len(names)} training classes ({', '.join(names[:10])}"
                f"{', ...' if len(names) > 10 else ''})"
            )
        codes = [-1 if _missing(v) else index[v] for v in values]
    elif all(_integral(v) for v in present):
        codes = [-1 if _missing(v) else int(v) for v in values]
        top = max(codes, default=-1)
        names = class_names if class_names is not None else [str(c) for c in range(top + 1)]
        if top >= len(names):
            raise ValueError(
                f"label {top} in column {column!r} of {source} is out of range for the "
                f"{len(names)} training classes"
            )
    else:
        kinds = sorted({type(v).__name__ for v in present})
        raise ValueError(
            f"column {column!r} of {source} holds {', '.join(kinds)} values; labels must be "
            f"class names, integers or a ClassLabel (set data.label_column)"
        )
    keep = [i for i, c in enumerate(codes) if c >= 0]
    return torch.tensor(codes, dtype=torch.long), list(names), keep


def _missing(value: Any) -> bool:
    if value is None or value == "":
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and value < 0


def _integral(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
