"""Image transforms (torchvision v2) built from a tower's preprocessing and the recipe.

:class:`ImagePreprocess` describes what a vision tower expects (size, normalisation); the
towers in :mod:`mmcontrast.models` report it, and the data side builds transforms from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchvision.transforms import v2

from mmcontrast.config import DataConfig

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ImagePreprocess:
    """What a vision tower expects: square size and per-channel normalisation."""

    size: int = 224
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


def image_transform(
    pre: ImagePreprocess, data: DataConfig | None = None, train: bool = False
) -> v2.Compose:
    """Resize + centre crop for evaluation; the recipe's augmentations added for training."""
    steps: list[v2.Transform] = [v2.ToImage()]
    if train and data is not None and data.random_resized_crop is not None:
        steps.append(
            v2.RandomResizedCrop(pre.size, scale=tuple(data.random_resized_crop), antialias=True)
        )
    else:
        steps += [v2.Resize(pre.size, antialias=True), v2.CenterCrop(pre.size)]
    if train and data is not None:
        if data.horizontal_flip > 0:
            steps.append(v2.RandomHorizontalFlip(data.horizontal_flip))
        if data.color_jitter > 0:
            j = data.color_jitter
            steps.append(
                v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(j / 4, 0.5))
            )
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=pre.mean, std=pre.std)]
    return v2.Compose(steps)
