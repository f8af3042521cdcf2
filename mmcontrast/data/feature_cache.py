"""Run a locked vision tower once over a table and keep its features (LiT-style training).

When the vision tower is fully locked and training images are not augmented, its output
for each image never changes: computing it once turns each training step into a text-tower
step. ``method.cache_locked_features`` in a recipe switches this on.

On CPU the tower sees a few images at a time (:func:`forward_in_chunks`): EfficientNet-Lite0's
stem output for a batch of 128 at 224 px is about 200 MB, and glibc hands blocks that large
to fresh pages, zeroed on first touch, even after :mod:`mmcontrast.cpu_allocator` has raised
its thresholds (the heap's free top above the trim threshold goes back). 16 images at a time
keep every activation reusable: on 2 cores EfficientNet-Lite0 runs 2.9x faster than at batch
128, 1.6x faster than at batch 128 with the raised thresholds alone
(``scripts/bench_cpu_chunks.py``). The result is the same up to float rounding for a tower
in eval mode; evaluation keeps whole batches, which suit ResNets and ViTs as well or better.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mmcontrast.data.image_text import ImageTable, image_batches

CPU_CHUNK_PIXELS = 16 * 224 * 224  # images per chunk = this / (height * width), at least 1


def cpu_chunk_size(pixels: Tensor) -> int:
    """How many images of ``pixels`` ([B, C, H, W]) to forward at a time: all of them unless
    they are on the CPU."""
    area = pixels.shape[-2] * pixels.shape[-1] if pixels.dim() == 4 else 0
    if pixels.device.type != "cpu" or area == 0:
        return len(pixels)
    return max(1, CPU_CHUNK_PIXELS // area)


def forward_in_chunks(encode: Callable[[Tensor], Tensor], pixels: Tensor) -> Tensor:
    """``encode(pixels)``, computed :func:`cpu_chunk_size` images at a time."""
    size = cpu_chunk_size(pixels)
    if size >= len(pixels):
        return encode(pixels)
    return torch.cat([encode(chunk) for chunk in pixels.split(size)])


@torch.inference_mode()
def compute_tower_features(
    tower: nn.Module,
    width: int,
    table: ImageTable,
    transform: Callable[[Any], Tensor],
    batch_size: int = 128,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[Tensor, dict[int, str]]:
    """Features [len(table), width] of a vision tower (``tower(pixel_values=...)``), zeros for
    unreadable images, and the unreadable rows."""
    was_training = tower.training
    tower.eval()
    device = next(tower.parameters()).device
    features = torch.zeros(len(table), width)
    bad: dict[int, str] = {}
    batches = image_batches(table, transform, batch_size, num_workers)
    for rows, pixels, unreadable in tqdm(
        batches,
        total=-(-len(table) // batch_size),
        desc="caching locked vision features",
        disable=not progress,
    ):
        bad.update(unreadable)
        if pixels is not None:
            pixels = pixels.to(device).contiguous(memory_format=torch.channels_last)
            encoded = forward_in_chunks(lambda x: tower(pixel_values=x), pixels)
            features[rows] = encoded.float().cpu()
    tower.train(was_training)
    return features, bad
