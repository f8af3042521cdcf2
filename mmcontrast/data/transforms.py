"""Image transforms (torchvision v2) built from a tower's preprocessing and the recipe.

:class:`ImagePreprocess` describes what a vision tower expects (size, normalisation); the
towers in :mod:`mmcontrast.models` report it, and the data side builds transforms from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torchvision.transforms import v2

from mmcontrast.config import DataConfig

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


INTERPOLATIONS = {  # ImagePreprocess.interpolation -> torchvision's mode
    "nearest": v2.InterpolationMode.NEAREST,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}
RESIZES = ("shortest", "squash")
CROP_OFFSETS = ("round", "floor")


@dataclass
class ImagePreprocess:
    """What a vision tower expects: square size, resizing and per-channel normalisation.

    Attributes:
        size: The side of the square the tower sees.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by.
        interpolation: "nearest", "bilinear" or "bicubic" (always antialiased).
        resize: "shortest": the shortest side to ``size``, then a centre crop to the
            square; "squash": straight to ``size`` x ``size``, the aspect ratio not kept.
        crop_offset: Where an odd margin goes in the centre crop: "round" is torchvision's
            ``CenterCrop`` (``round(margin / 2)``), "floor" is transformers' processors'
            (``margin // 2``).

    Raises:
        ValueError: An unknown interpolation, resize or crop offset.
    """

    size: int = 224
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    interpolation: str = "bilinear"
    resize: str = "shortest"
    crop_offset: str = "round"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("interpolation", tuple(INTERPOLATIONS)),
            ("resize", RESIZES),
            ("crop_offset", CROP_OFFSETS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"ImagePreprocess.{name} is {getattr(self, name)!r}; "
                    f"use one of {', '.join(allowed)}"
                )


class FloorCenterCrop(v2.Transform):
    """Centre crop to ``size`` x ``size`` with the margin's odd pixel on the right/bottom.

    transformers' image processors crop at ``(H - size) // 2``; torchvision's
    ``CenterCrop`` rounds, so the two differ by one pixel for some sizes. Images smaller
    than ``size`` are first padded with zeros, as ``CenterCrop`` does.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = inpt.shape[-2:]
        if height < self.size or width < self.size:
            return self._call_kernel(v2.functional.center_crop, inpt, [self.size, self.size])
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return self._call_kernel(v2.functional.crop, inpt, top, left, self.size, self.size)


def resize_steps(pre: ImagePreprocess) -> list[v2.Transform]:
    """The deterministic resize (and crop) of ``pre``: what evaluation does."""
    mode = INTERPOLATIONS[pre.interpolation]
    if pre.resize == "squash":
        return [v2.Resize((pre.size, pre.size), interpolation=mode, antialias=True)]
    crop = FloorCenterCrop(pre.size) if pre.crop_offset == "floor" else v2.CenterCrop(pre.size)
    return [v2.Resize(pre.size, interpolation=mode, antialias=True), crop]


def image_transform(
    pre: ImagePreprocess, data: DataConfig | None = None, train: bool = False
) -> v2.Compose:
    """Resize (+ centre crop) as ``pre`` says for evaluation; the recipe's augmentations
    added for training (its random resized crop uses ``pre.interpolation``)."""
    steps: list[v2.Transform] = [v2.ToImage()]
    if train and data is not None and data.random_resized_crop is not None:
        steps.append(
            v2.RandomResizedCrop(
                pre.size,
                scale=tuple(data.random_resized_crop),
                interpolation=INTERPOLATIONS[pre.interpolation],
                antialias=True,
            )
        )
    else:
        steps += resize_steps(pre)
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
