"""Views of a whole batch at once (``augment.batched``): the SimCLR / BYOL / SwAV pipeline on
``[B, C, H, W]`` tensors instead of one PIL image at a time.

Per-sample torchvision transforms cost more than a small backbone's training step on small
images (Fashion-MNIST, CIFAR), so the CPU spends its time augmenting. Here every random
parameter is drawn for the batch in one go and applied with batched tensor operations:
random resized crop and flip as one ``affine_grid`` / ``grid_sample``, colour jitter as
per-sample blends, grey scale, Gaussian blur as one grouped convolution, solarisation.
Crops are resampled with the tower's interpolation (``ImagePreprocess.interpolation``:
nearest, bilinear or bicubic, the last clamped to [0, 1]).

The distributions follow torchvision's: crop area in ``crop_scale`` and log-uniform aspect
ratio in [3/4, 4/3] (ten tries, then the whole image), brightness / contrast / saturation
factors uniform in [1 - x, 1 + x], hue shift uniform in [-hue, hue], blur sigma uniform in
``blur_sigma`` with a kernel of 10 % of the view size. Differences, by design: jitter is
applied in a fixed order (brightness, contrast, saturation, hue); hue is rotated in YIQ
space rather than shifted in HSV; crops are sampled continuously and resampled without
antialiasing, so this path suits images about the size of the views (it requires
tables held in memory as one uint8 tensor, all images the same size).

Randomness comes from a generator seeded by (seed, epoch, first index of the batch), so a
resumed run sees exactly the views of the uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcontrast.config import AugmentConfig
from mmcontrast.data.image_text import SeededSamples, sample_seed
from mmcontrast.data.skips import Skips
from mmcontrast.data.transforms import ImagePreprocess
from mmcontrast.data.views import check_augment, local_view_size

LUMA = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale weights
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


@dataclass
class ViewSpec:
    size: int
    scale: Sequence[float]
    blur_prob: float
    solarize_prob: float


class BatchedViews:
    """``[B, C, H, W]`` uint8 images -> one normalised ``[B, 3, size, size]`` tensor per view."""

    def __init__(self, pre: ImagePreprocess, aug: AugmentConfig) -> None:
        check_augment(aug)
        self.aug = aug
        self.interpolation = pre.interpolation
        self.mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(pre.std).view(1, -1, 1, 1)
        local = ViewSpec(local_view_size(pre, aug), aug.local_crop_scale, aug.local_blur_prob, 0.0)
        self.specs = [
            ViewSpec(pre.size, aug.crop_scale, aug.blur_prob[i], aug.solarize_prob[i])
            for i in range(2)
        ] + [local] * aug.local_views

    def __call__(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(
                f"expected [B, C, H, W] uint8 images, got {images.dtype} {tuple(images.shape)}"
            )
        x = images.float() / 255
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return [self._view(x, spec, generator) for spec in self.specs]

    def _view(self, x: Tensor, spec: ViewSpec, g: torch.Generator) -> Tensor:
        aug, b = self.aug, x.shape[0]
        out = resized_crop_flip(
            x, spec.size, spec.scale, aug.horizontal_flip, g, self.interpolation
        )
        if aug.color_jitter_prob > 0:
            apply = _coin(b, aug.color_jitter_prob, g)
            out = torch.where(apply, color_jitter(out, aug, g), out)
        if aug.grayscale_prob > 0:
            out = torch.where(_coin(b, aug.grayscale_prob, g), grayscale(out), out)
        if spec.blur_prob > 0:
            out = torch.where(
                _coin(b, spec.blur_prob, g), gaussian_blur(out, aug.blur_sigma, g), out
            )
        if spec.solarize_prob > 0:
            solarized = torch.where(out >= 128 / 255, 1 - out, out)
            out = torch.where(_coin(b, spec.solarize_prob, g), solarized, out)
        return (out - self.mean) / self.std


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _coin(n: int, p: float, g: torch.Generator) -> Tensor:
    """``[n, 1, 1, 1]`` booleans, True with probability p."""
    return (torch.rand(n, generator=g) < p).view(n, 1, 1, 1)


def resized_crop_flip(
    x: Tensor,
    size: int,
    scale: Sequence[float],
    flip_prob: float,
    g: torch.Generator,
    interpolation: str = "bilinear",
) -> Tensor:
    """Random resized crop (torchvision's sampling) and horizontal flip in one resampling
    (``interpolation``: nearest, bilinear or bicubic; bicubic's overshoot is clamped)."""
    b, _, height, width = x.shape
    tries = 10
    area = _uniform(b * tries, scale[0], scale[1], g).view(b, tries)
    log_ratio = _uniform(b * tries, math.log(3 / 4), math.log(4 / 3), g).view(b, tries)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt()  # fraction of the width
    h = (area / ratio).sqrt()
    fits = (w <= 1) & (h <= 1)
    first = fits.float().argmax(1)  # first fitting try; none fits -> the whole image
    ok = fits.any(1)
    pick = torch.arange(b)
    w = torch.where(ok, w[pick, first], torch.ones(b))
    h = torch.where(ok, h[pick, first], torch.ones(b))
    left = torch.rand(b, generator=g) * (1 - w)
    top = torch.rand(b, generator=g) * (1 - h)
    flip = torch.where(torch.rand(b, generator=g) < flip_prob, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = 2 * left + w - 1  # crop centre in [-1, 1] coordinates
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * top + h - 1
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False)
    return out.clamp(0, 1) if interpolation == "bicubic" else out


def grayscale(x: Tensor) -> Tensor:
    weights = torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True).expand_as(x)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor.view(-1, 1, 1, 1) * x + (1 - factor.view(-1, 1, 1, 1)) * other).clamp(0, 1)


def color_jitter(x: Tensor, aug: AugmentConfig, g: torch.Generator) -> Tensor:
    """Brightness, contrast, saturation (torchvision's blends), then a hue rotation."""
    b = x.shape[0]
    if aug.brightness > 0:
        factor = _uniform(b, max(0.0, 1 - aug.brightness), 1 + aug.brightness, g)
        x = _blend(x, torch.zeros_like(x), factor)
    if aug.contrast > 0:
        factor = _uniform(b, max(0.0, 1 - aug.contrast), 1 + aug.contrast, g)
        mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x = _blend(x, mean.expand_as(x), factor)
    if aug.saturation > 0:
        factor = _uniform(b, max(0.0, 1 - aug.saturation), 1 + aug.saturation, g)
        x = _blend(x, grayscale(x), factor)
    if aug.hue > 0:
        angle = _uniform(b, -aug.hue, aug.hue, g) * 2 * math.pi
        x = rotate_hue(x, angle)
    return x


def rotate_hue(x: Tensor, angle: Tensor) -> Tensor:
    """Rotates the chroma (I, Q) of YIQ by ``angle`` radians per sample; luma is kept."""
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.zeros(len(angle), 3, 3)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    to_yiq = _RGB_TO_YIQ.to(x.dtype)
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # [B, 3, 3] acting on RGB
    return torch.einsum("bij,bjhw->bihw", matrix, x).clamp(0, 1)


def gaussian_blur(x: Tensor, sigma_range: Sequence[float], g: torch.Generator) -> Tensor:
    """Per-sample Gaussian blur, kernel 10 % of the size (odd, >= 3), reflect padding."""
    b, c, size, _ = x.shape
    kernel = max(3, int(0.1 * size))
    kernel += 1 - kernel % 2
    sigma = _uniform(b, sigma_range[0], sigma_range[1], g).view(b, 1)
    offsets = torch.arange(kernel, dtype=x.dtype) - kernel // 2
    weights = torch.exp(-0.5 * (offsets.view(1, -1) / sigma) ** 2)
    weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, k]
    pad = kernel // 2
    flat = x.reshape(1, b * c, size, size)
    flat = F.conv2d(
        F.pad(flat, (pad, pad, 0, 0), mode="reflect"),
        weights.view(b * c, 1, 1, kernel),
        groups=b * c,
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, pad, pad), mode="reflect"),
        weights.view(b * c, 1, kernel, 1),
        groups=b * c,
    )
    return flat.view(b, c, size, size)


class RawSamples(SeededSamples):
    """``{"index", "image" (uint8 [C, H, W]), "label", "epoch"}`` rows for ``BatchedViewCollator``."""

    def __init__(self, table: Any, seed: int = 0) -> None:
        images = getattr(table, "images", None)
        if not isinstance(images, Tensor) or images.dtype != torch.uint8:
            raise ValueError(
                f"augment.batched needs images held in memory as one uint8 tensor (e.g. "
                f"fashion_mnist); {table.source} is read image by image: set augment.batched: false"
            )
        super().__init__(table, seed)
        self.images = images if images.ndim == 4 else images[:, None]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "index": index,
            "image": self.images[index],
            "label": self.table.label(index),
            "epoch": self.epoch,
        }


class BatchedViewCollator:
    """Stacks raw samples and draws all their views at once (same batch keys as
    ``MultiViewCollator``: ``views``, ``labels``, ``skipped``)."""

    def __init__(self, views: BatchedViews, seed: int = 0) -> None:
        self.views, self.seed = views, seed

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        generator = torch.Generator()
        generator.manual_seed(sample_seed(self.seed, samples[0]["epoch"], samples[0]["index"]))
        images = torch.stack([s["image"] for s in samples])
        return {
            "views": self.views(images, generator),
            "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
            "skipped": Skips(),  # images in memory: none is unreadable
        }
