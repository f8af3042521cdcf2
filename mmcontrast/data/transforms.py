"""Image transforms (torchvision v2) built from a tower's preprocessing and the recipe."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from mmcontrast.config import DataConfig
from mmcontrast.models.tower import ImagePreprocess


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
