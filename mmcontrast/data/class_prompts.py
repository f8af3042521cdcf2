"""Labelled images as image-text pairs: each image with a prompt of its class (FLYP).

FLYP (Goyal et al. 2023, "Finetune like you pretrain") fine-tunes a zero-shot classifier
with the contrastive loss it was pretrained with, on pairs of an image and a caption made
from its class name and a prompt template, the same templates zero-shot evaluation uses.
Each sample draws its template at random from a generator seeded by (seed, epoch, index),
so a resumed run sees the same captions; it carries its class index so the loss can mask
other images of the same class in the batch (:class:`mmcontrast.losses.ClipLoss` labels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mmcontrast.data.image_text import ImageTextDataset
from mmcontrast.data.images import BadSample, load_image
from mmcontrast.data.labelled import LabelledImages
from mmcontrast.data.skips import indexed_skip


def check_templates(templates: Sequence[str]) -> list[str]:
    """Prompt templates with one ``{c}`` each (the class name).

    Raises:
        ValueError: No templates, or one without ``{c}``.
    """
    if not templates or any(not isinstance(t, str) or "{c}" not in t for t in templates):
        raise ValueError(
            f"prompt templates must be strings with {{c}} for the class name, e.g. "
            f"['a photo of a {{c}}.'], got {list(templates)!r}"
        )
    return list(templates)


class ClassPromptDataset(ImageTextDataset):
    """Yields ``{"pixel_values", "caption", "label"}`` (or ``vision_features``), or a
    skipped sample naming the row of an unreadable image (``skips.py``).

    Args:
        table: Labelled images whose ``class_names`` index ``names``.
        names: The prompt name of each class, in the table's class order.
        templates: Format strings with ``{c}``.
        transform: PIL image -> pixels.
        vision_features: A locked vision tower's features, one row per table row.
        bad_rows: Rows whose image could not be read when the features were cached.
    """

    def __init__(
        self,
        table: LabelledImages,
        names: Sequence[str],
        templates: Sequence[str],
        transform: Callable[[Any], Tensor],
        seed: int = 0,
        vision_features: Tensor | None = None,
        bad_rows: dict[int, str] | None = None,
    ) -> None:
        if len(names) != len(table.class_names):
            raise ValueError(
                f"{len(names)} class names for {len(table.class_names)} classes in {table.source}"
            )
        # the rows' captions are made here from labels: the pair table's captions() is not read
        super().__init__(table, transform, seed, vision_features, bad_rows)  # type: ignore[arg-type]
        self.names = list(names)
        self.templates = check_templates(templates)

    def __getitem__(self, index: int) -> dict[str, Any]:
        label = self.table.label(index)
        with self.seeded(index):
            template = self.templates[int(torch.randint(len(self.templates), ()))]
            sample: dict[str, Any] = {
                "caption": template.format(c=self.names[label]),
                "label": label,
            }
            if self.vision_features is not None:
                if index in self.bad_rows:
                    return indexed_skip(self.bad_rows[index], self.table.image(index), index)
                return {**sample, "vision_features": self.vision_features[index]}
            value = self.table.image(index)
            try:
                image = load_image(value)
            except BadSample as bad:
                return indexed_skip(bad.reason, value, index)
            return {**sample, "pixel_values": self.transform(image)}
