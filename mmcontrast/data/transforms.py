"""Image transforms (torchvision v2) built from a tower's preprocessing and the recipe.

:class:`ImagePreprocess` describes what a vision tower expects (size, normalisation, how
images are resized and cropped); the towers in :mod:`mmcontrast.models` fill it from their
source (a transformers image processor, timm's data config, open_clip's ``preprocess_cfg``),
and the data side builds transforms from it. The evaluation transform follows timm's
``transforms_imagenet_eval`` and open_clip's ``image_transform`` step for step (resize to
``floor(size / crop_pct)``, then centre crop, or pad for ``longest``): on the PIL image
for open_clip towers, as open_clip does, on uint8 tensors otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from mmcontrast.config import DataConfig

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


INTERPOLATIONS = {  # ImagePreprocess.interpolation -> torchvision's mode
    "nearest": v2.InterpolationMode.NEAREST,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}
RESIZES = ("shortest", "longest", "squash")
CROP_OFFSETS = ("round", "floor")
BACKENDS = ("tensor", "pil")


@dataclass
class ImagePreprocess:
    """What a vision tower expects: square size, resizing and per-channel normalisation.

    Attributes:
        size: The side of the square the tower sees.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by.
        interpolation: "nearest", "bilinear" or "bicubic" (always antialiased).
        resize: "shortest": the shortest side to :attr:`resize_size`, then a centre crop
            to ``size``; "squash": to a :attr:`resize_size` square (the aspect ratio not
            kept), then a centre crop to ``size``; "longest": the longest side to
            :attr:`resize_size`, then a centre crop or a pad with ``fill`` to ``size``
            (open_clip's ``resize_mode: longest``, timm's ``crop_mode: border``).
        crop_offset: Where an odd margin goes in the centre crop: "round" is torchvision's
            ``CenterCrop`` (``round(margin / 2)``), "floor" is transformers' processors'
            (``margin // 2``).
        crop_pct: The fraction of the resized image the crop keeps: images are resized to
            ``floor(size / crop_pct)`` first, as timm's evaluation transform does (0.875:
            224 from 256). 1 resizes straight to ``size``; above 1 pads with zeros.
        fill: The pad colour of "longest", 0-255 per channel (open_clip's ``fill_color``;
            timm pads with the mean colour).
        backend: What the deterministic resize and crop work on: "tensor" resizes the
            decoded image as a uint8 tensor (torchvision's kernels, as transformers' default
            image processors do); "pil" resizes and crops a PIL image before it becomes a
            tensor, as open_clip's transform does, so the pixels are open_clip's own.
            Random resized crops (training) always work on tensors.

    Raises:
        ValueError: An unknown interpolation, resize or crop offset, a ``crop_pct`` that is
            not positive, or a ``fill`` outside 0-255.
    """

    size: int = 224
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    interpolation: str = "bilinear"
    resize: str = "shortest"
    crop_offset: str = "round"
    crop_pct: float = 1.0
    fill: list[int] = field(default_factory=lambda: [0, 0, 0])
    backend: str = "tensor"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("interpolation", tuple(INTERPOLATIONS)),
            ("resize", RESIZES),
            ("crop_offset", CROP_OFFSETS),
            ("backend", BACKENDS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"ImagePreprocess.{name} is {getattr(self, name)!r}; "
                    f"use one of {', '.join(allowed)}"
                )
        if not self.crop_pct > 0:
            raise ValueError(
                f"ImagePreprocess.crop_pct is {self.crop_pct}; use a positive fraction "
                "(1: resize straight to size, 0.875: resize to size / 0.875, then crop)"
            )
        if not all(0 <= v <= 255 for v in self.fill):
            raise ValueError(f"ImagePreprocess.fill is {self.fill}; use 0-255 per channel")

    @property
    def resize_size(self) -> int:
        """The side images are resized to before the crop: ``floor(size / crop_pct)``, or the
        whole number it is within rounding of (224 / (224 / 232) is 232)."""
        scale = self.size / self.crop_pct
        return round(scale) if abs(scale - round(scale)) < 1e-6 else math.floor(scale)


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
        height, width = v2.functional.get_size(inpt)  # a tensor or a PIL image
        if height < self.size or width < self.size:
            return self._call_kernel(v2.functional.center_crop, inpt, [self.size, self.size])
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return self._call_kernel(v2.functional.crop, inpt, top, left, self.size, self.size)


class ResizeLongest(v2.Transform):
    """Resize so that the longest side is ``size``, keeping the aspect ratio.

    The short side is ``round(side / ratio)`` with ``ratio = max(H, W) / size``: the
    arithmetic of open_clip's and timm's ``ResizeKeepRatio(longest=1)``.
    """

    def __init__(self, size: int, interpolation: v2.InterpolationMode) -> None:
        super().__init__()
        self.size, self.interpolation = size, interpolation

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = v2.functional.get_size(inpt)
        ratio = max(height / self.size, width / self.size)
        new_size = [round(height / ratio), round(width / ratio)]
        return self._call_kernel(
            v2.functional.resize, inpt, new_size, interpolation=self.interpolation, antialias=True
        )


class PadToSize(v2.Transform):
    """Pad each side shorter than ``size`` to ``size`` with ``fill`` (0-255 per channel),
    the odd pixel on the right/bottom (open_clip's and timm's ``CenterCropOrPad``)."""

    def __init__(self, size: int, fill: list[int]) -> None:
        super().__init__()
        self.size, self.fill = size, list(fill)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = v2.functional.get_size(inpt)
        dw, dh = max(self.size - width, 0), max(self.size - height, 0)
        if not (dw or dh):
            return inpt
        floating = isinstance(inpt, torch.Tensor) and inpt.is_floating_point()
        fill: list[float] | list[int] = [v / 255 for v in self.fill] if floating else self.fill
        padding = [dw // 2, dh // 2, (dw + 1) // 2, (dh + 1) // 2]  # left, top, right, bottom
        return self._call_kernel(v2.functional.pad, inpt, padding, fill=fill)


class ArrayToPIL(v2.Transform):
    """A NumPy ``H x W (x C)`` uint8 image as a PIL image (the ``pil`` backend resizes PIL
    images; torchvision's v2 transforms would pass an array through unchanged)."""

    def forward(self, *inputs: Any) -> Any:
        image = inputs[0] if len(inputs) == 1 else inputs
        if isinstance(image, np.ndarray):
            return Image.fromarray(image)
        return image


def resize_steps(pre: ImagePreprocess) -> list[v2.Transform]:
    """The deterministic resize and crop (or pad) of ``pre``: what evaluation does.

    As timm's ``transforms_imagenet_eval``: resize to ``pre.resize_size`` (the shortest
    side, the longest side, or the whole square), then centre-crop ``pre.size``.
    """
    mode = INTERPOLATIONS[pre.interpolation]
    scale = pre.resize_size
    crop = FloorCenterCrop(pre.size) if pre.crop_offset == "floor" else v2.CenterCrop(pre.size)
    if pre.resize == "longest":
        return [ResizeLongest(scale, mode), PadToSize(pre.size, pre.fill), crop]
    if pre.resize == "squash":
        steps: list[v2.Transform] = [v2.Resize((scale, scale), interpolation=mode, antialias=True)]
        return steps if scale == pre.size else [*steps, crop]
    return [v2.Resize(scale, interpolation=mode, antialias=True), crop]


def image_transform(
    pre: ImagePreprocess, data: DataConfig | None = None, train: bool = False
) -> v2.Compose:
    """Resize and centre crop as ``pre`` says for evaluation; the recipe's augmentations
    added for training (its random resized crop uses ``pre.interpolation``; ``crop_pct``
    is an evaluation setting, as in timm)."""
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
    elif pre.backend == "pil":  # PIL resizes and crops, then the tensor (a tensor: as is)
        steps = [ArrayToPIL(), *resize_steps(pre), v2.ToImage()]
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
