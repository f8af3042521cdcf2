"""What an evaluation reads: a data source, its splits, and (for classification) the classes.

``--data`` is an imagefolder directory, any ``datasets`` name or path, or a built-in task
that needs no network:

* ``emoji``: the emoji set's held-out concepts (``test``) for retrieval;
* ``emoji-category`` / ``emoji-subcategory``: the same images, zero-shot over the Unicode
  categories / subcategories of every split (kNN and linear probes use ``train`` as bank);
* ``fashion_mnist``: Fashion-MNIST's test set, classes named for prompts.

The emoji set is read from ``data/emoji`` when a build is there (``make demo`` writes it)
and otherwise built once into ``~/.cache/mmcontrast/emoji`` (needs the ``demo`` extra).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcontrast.config import DataConfig
from mmcontrast.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from mmcontrast.data.labelled import readable_name
from mmcontrast.data.metadata import MetadataError, read_metadata_rows

EMOJI_TEMPLATES = ["{c}", "an emoji of {c}.", "an icon of {c}."]
FASHION_MNIST_TEMPLATES = [
    "a photo of a {c}.",
    "a black and white photo of a {c}.",
    "a low resolution photo of a {c}.",
]
FASHION_MNIST_NAMES = {"T-shirt/top": "t-shirt", "Ankle boot": "ankle boot"}
__all__ = ["BUILTINS", "EvalData", "emoji_class_names", "readable_name", "resolve_data"]
BUILTINS = ("emoji", "emoji-category", "emoji-subcategory", "fashion_mnist")


@dataclass
class EvalData:
    """A resolved data source: the config the loaders read, the split to score, and classes.

    Attributes:
        name: What the user gave (a built-in name, a folder or a ``datasets`` name).
        config: The loaders' data config (path, columns).
        split: The split scored (queries for kNN and linear probes).
        train_split: kNN bank and linear-probe training split.
        class_labels: The label values in class order (None: the scored split's own), so
            classes absent from the scored split still enter a zero-shot classifier.
        class_names: Class names for zero-shot prompts (None: the label values).
        templates: Default zero-shot prompt templates (a set name or format strings).
    """

    name: str
    config: DataConfig
    split: str
    train_split: str = "train"
    class_labels: list[str] | None = None
    class_names: list[str] | None = None
    templates: str | list[str] = "openai_imagenet"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.config.path,
            "split": self.split,
            "train_split": self.train_split,
            "image_column": self.config.image_column,
            "caption_column": self.config.caption_column,
            "label_column": self.config.label_column,
            "group_column": self.config.group_column,
        }


def emoji_folder() -> Path:
    """The emoji imagefolder: ``data/emoji`` if built there, else a cached build."""
    local = Path("data/emoji")
    if (local / "build_info.json").is_file():
        return local
    cache = Path(os.environ.get("MMCONTRAST_CACHE", Path.home() / ".cache" / "mmcontrast"))
    folder = cache / "emoji"
    if not (folder / "build_info.json").is_file():
        from mmcontrast.demo.emoji import build_emoji_dataset

        print(f"building the emoji evaluation set in {folder} (once)")
        build_emoji_dataset(folder)
    return folder


def emoji_class_names(folder: Path, column: str) -> list[str]:
    """Sorted label values of every split, so held-out classes are in the classifier.

    Raises:
        MetadataError: A metadata line that is not a JSON object, or has no ``column``
            (the message names the file and line).
    """
    names: set[str] = set()
    for metadata in folder.glob("*/metadata.jsonl"):
        for number, row in read_metadata_rows(metadata):
            if column not in row:
                raise MetadataError(
                    f"{metadata}:{number}: no {column!r} field; rebuild the emoji set "
                    "(`make demo`, or delete the folder to build it again)"
                )
            names.add(row[column])
    return sorted(names)


def resolve_data(
    data: str,
    split: str | None = None,
    train_split: str | None = None,
    base: DataConfig | None = None,
    **columns: str | None,
) -> EvalData:
    """Turn ``--data`` (plus split and column overrides) into an :class:`EvalData`.

    Args:
        data: A built-in name (see module docstring), a folder or a ``datasets`` name.
        split: Split to score; default ``test`` (or the base config's eval split).
        train_split: Bank / probe-training split; default ``train``.
        base: A run's data config to start from (its columns are kept).
        columns: ``image_column``, ``caption_column``, ``label_column`` and
            ``group_column`` (retrieval per value of that column) overrides.
    """
    config = dataclasses.replace(base) if base is not None else DataConfig()
    given = {k: v for k, v in columns.items() if v is not None}
    unknown = set(given) - {"image_column", "caption_column", "label_column", "group_column"}
    if unknown:
        raise ValueError(f"unknown data column option(s) {sorted(unknown)}")
    result = EvalData(name=data, config=config, split="test")
    if data.startswith("emoji"):
        column = {"emoji": None, "emoji-category": "category", "emoji-subcategory": "subcategory"}
        if data not in column:
            raise ValueError(f"unknown built-in {data!r} (built-ins: {', '.join(BUILTINS)})")
        folder = emoji_folder()
        config.path, config.name = str(folder), None
        config.image_column, config.caption_column = "image", "text"
        config.label_column = column[data] or "category"
        result.class_labels = emoji_class_names(folder, config.label_column)
        result.class_names = [readable_name(label) for label in result.class_labels]
        result.templates = EMOJI_TEMPLATES
    elif data in ("fashion_mnist", "fashion-mnist"):
        config.path, config.name = "fashion_mnist", None
        result.class_names = [FASHION_MNIST_NAMES.get(c, c.lower()) for c in FASHION_MNIST_CLASSES]
        result.templates = FASHION_MNIST_TEMPLATES
    else:
        if base is None or data != base.path:
            config.path, config.name = data, None
    for key, value in given.items():
        setattr(config, key, value)
    result.split = split or (base.eval_split if base is not None and base.eval_split else "test")
    result.train_split = train_split or (base.train_split if base is not None else "train")
    return result
