"""Augmented views of labelled images for the vision self-supervised recipes.

Two global views (SimCLR's pipeline by default; BYOL's asymmetric pair through
``augment.blur_prob`` / ``augment.solarize_prob``) plus ``augment.local_views``
low-resolution crops (SwAV's multi-crop). Every sample's randomness comes from a generator
seeded by (seed, epoch, index), so a resumed run sees exactly the views the uninterrupted
run saw, whatever the number of workers.

References:
    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", 2020.
    Grill et al., "Bootstrap Your Own Latent", 2020.
    Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments", 2020.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import to_pil_image

from mmcontrast.config import AugmentConfig
from mmcontrast.data.image_text import SeededSamples
from mmcontrast.data.images import BadSample, load_image
from mmcontrast.data.labelled import LabelledImages
from mmcontrast.data.skips import Skips, indexed_skip
from mmcontrast.data.transforms import INTERPOLATIONS, ImagePreprocess

_TITLE_PX = 14  # column titles of views.png


def view_transforms(pre: ImagePreprocess, aug: AugmentConfig) -> list[Callable[[Any], Tensor]]:
    """Two global view transforms at ``pre.size``, then ``aug.local_views`` local ones.

    Crops are resized with the tower's ``pre.interpolation`` (antialiased), as its own
    training transform does.

    Raises:
        ValueError: A probability outside [0, 1], a bad crop scale or a negative count.
    """
    check_augment(aug)
    local_size = local_view_size(pre, aug)
    globals_ = [
        _pipeline(pre, aug, pre.size, aug.crop_scale, aug.blur_prob[i], aug.solarize_prob[i])
        for i in range(2)
    ]
    local = _pipeline(pre, aug, local_size, aug.local_crop_scale, aug.local_blur_prob, 0.0)
    return [*globals_, *[local] * aug.local_views]


def _pipeline(
    pre: ImagePreprocess,
    aug: AugmentConfig,
    size: int,
    scale: tuple[float, float],
    blur_prob: float,
    solarize_prob: float,
) -> v2.Compose:
    kernel = max(3, int(0.1 * size))
    kernel += 1 - kernel % 2  # odd
    steps: list[v2.Transform] = [
        v2.ToImage(),
        v2.RandomResizedCrop(
            size,
            scale=tuple(scale),
            interpolation=INTERPOLATIONS[pre.interpolation],
            antialias=True,
        ),
        v2.RandomHorizontalFlip(aug.horizontal_flip),
    ]
    if aug.color_jitter_prob > 0:
        jitter = v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)
        steps.append(v2.RandomApply([jitter], p=aug.color_jitter_prob))
    if aug.grayscale_prob > 0:
        steps.append(v2.RandomGrayscale(aug.grayscale_prob))
    if blur_prob > 0:
        blur = v2.GaussianBlur(kernel, sigma=tuple(aug.blur_sigma))
        steps.append(v2.RandomApply([blur], p=blur_prob))
    if solarize_prob > 0:  # on uint8, before ToDtype
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_prob))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    return v2.Compose(steps)


def local_view_size(pre: ImagePreprocess, aug: AugmentConfig) -> int:
    """``augment.local_size``, by default 3/7 of the global size (96 for 224)."""
    return aug.local_size or max(8, round(pre.size * 3 / 7))


def check_augment(aug: AugmentConfig) -> None:
    """Raises ``ValueError`` on a probability outside [0, 1], a bad crop scale or count."""
    probs = {
        "horizontal_flip": [aug.horizontal_flip],
        "color_jitter_prob": [aug.color_jitter_prob],
        "grayscale_prob": [aug.grayscale_prob],
        "blur_prob": list(aug.blur_prob),
        "solarize_prob": list(aug.solarize_prob),
        "local_blur_prob": [aug.local_blur_prob],
    }
    for key, values in probs.items():
        if not all(0.0 <= p <= 1.0 for p in values):
            raise ValueError(f"augment.{key} = {values} must be probabilities in [0, 1]")
    for key in ("crop_scale", "local_crop_scale"):
        low, high = getattr(aug, key)
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"augment.{key} = {[low, high]} must satisfy 0 < low <= high <= 1")
    if aug.local_views < 0 or (aug.local_size is not None and aug.local_size < 1):
        raise ValueError("augment.local_views must be >= 0 and augment.local_size >= 1")


class MultiViewDataset(SeededSamples):
    """Yields ``{"views": [Tensor, ...], "label": int}``, or a skipped sample naming a bad
    row (``skips.py``)."""

    def __init__(
        self, table: LabelledImages, transforms: Sequence[Callable[[Any], Tensor]], seed: int = 0
    ) -> None:
        super().__init__(table, seed)
        self.transforms = list(transforms)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with self.seeded(index):
            value = self.table.image(index)
            try:
                image = load_image(value)
            except BadSample as bad:
                return indexed_skip(bad.reason, value, index)
            views = [transform(image) for transform in self.transforms]
            return {"views": views, "label": self.table.label(index)}


class MultiViewCollator:
    """Stacks each view over the batch and gathers skipped samples (``batch["skipped"]``).

    Returns ``{"views": [[B, C, H, W], ...], "labels": [B], "skipped": Skips}`` (reason ->
    count, naming the rows), or only ``{"skipped": ...}`` when no sample was readable.
    """

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        good = [s for s in samples if "skip" not in s]
        batch: dict[str, Any] = {"skipped": Skips.of_samples(samples)}
        if good:
            batch["views"] = [
                torch.stack([s["views"][v] for s in good]) for v in range(len(good[0]["views"]))
            ]
            batch["labels"] = torch.tensor([s["label"] for s in good], dtype=torch.long)
        return batch


def save_views_png(
    views: Sequence[Tensor],
    path: str | Path,
    mean: Sequence[float],
    std: Sequence[float],
    max_images: int = 8,
    originals: Sequence[Image.Image] | None = None,
    min_cell: int = 96,
) -> Path:
    """Write a titled grid: one row per image, its original then each of its views.

    Views are de-normalised and enlarged (nearest, by a whole factor) to a cell of at least
    ``min_cell`` pixels, so small images (Fashion-MNIST's 28 px) stay readable; local views
    fill the same cell, so their low resolution shows. The original, when given, is fitted
    into the cell keeping its aspect ratio (enlarged as the views are, shrunk smoothly). Columns are titled "original", "view 1", ...,
    with "(local)" on views smaller than the first.

    Args:
        views: ``[B, C, H, W]`` tensors, one per view, normalised with ``mean`` / ``std``.
        path: The PNG to write (parent folders are created).
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        max_images: Rows to draw at most.
        originals: The images the views were drawn from, one per row of ``views``.
        min_cell: Smallest side of one cell, in pixels.

    Raises:
        ValueError: ``originals`` holds fewer images than the rows drawn.
    """
    size = tuple(views[0].shape[-2:])
    rows = min(max_images, views[0].shape[0])
    if originals is not None and len(originals) < rows:
        raise ValueError(f"{len(originals)} originals for {rows} rows of views")
    scale = -(-min_cell // max(size))  # whole factor: pixels stay square and sharp
    cell = (size[1] * scale, size[0] * scale)  # (width, height), as PIL counts
    m = torch.tensor(list(mean)).view(1, -1, 1, 1)
    s = torch.tensor(list(std)).view(1, -1, 1, 1)
    columns: list[list[Image.Image]] = []
    titles: list[str] = []
    if originals is not None:
        columns.append([_fit(im, cell) for im in originals[:rows]])
        titles.append("original")
    for number, view in enumerate(views, start=1):
        x = view[:rows].detach().float().cpu() * s + m
        local = tuple(x.shape[-2:]) != size
        x = F.interpolate(x.clamp(0, 1), size=(cell[1], cell[0]), mode="nearest")
        columns.append([to_pil_image(image) for image in x])
        titles.append(f"view {number} (local)" if local else f"view {number}")
    font = ImageFont.load_default(size=_TITLE_PX)
    gap, band = 4, _TITLE_PX + 8
    grid = Image.new(
        "RGB",
        (gap + len(columns) * (cell[0] + gap), band + rows * (cell[1] + gap)),
        "white",
    )
    draw = ImageDraw.Draw(grid)
    for c, (title, column) in enumerate(zip(titles, columns, strict=True)):
        left = gap + c * (cell[0] + gap)
        draw.text((left + cell[0] / 2, band / 2), title, fill="black", font=font, anchor="mm")
        for r, image in enumerate(column[:rows]):
            grid.paste(image.convert("RGB"), (left, band + r * (cell[1] + gap)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def _fit(image: Image.Image, cell: tuple[int, int]) -> Image.Image:
    """``image`` in a white ``cell`` (width, height), aspect ratio kept: enlarged by nearest
    neighbour like the views, shrunk with Lanczos."""
    image = image.convert("RGB")
    grow = image.width <= cell[0] and image.height <= cell[1]
    method = Image.Resampling.NEAREST if grow else Image.Resampling.LANCZOS
    return ImageOps.pad(image, cell, method=method, color="white")
