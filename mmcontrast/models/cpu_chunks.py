"""Run a locked tower over image batches a few images at a time on CPU, where it is faster.

Caching a locked tower's features (:mod:`mmcontrast.data.feature_cache`) reads images in
batches of 128. EfficientNet-Lite0's stem output for such a batch at 224 px is about 200 MB,
and glibc hands blocks that large to fresh pages, zeroed on first touch, even after
:mod:`mmcontrast.cpu_allocator` has raised its thresholds (the heap's free top above the
trim threshold goes back). Forwarding 16 images at a time keeps every activation reusable:
on 2 cores EfficientNet-Lite0 runs 2.9x faster than at batch 128, 1.6x faster than at
batch 128 with the raised thresholds alone (``scripts/bench_cpu_chunks.py``). The result is
the same up to float rounding for an encoder in eval mode that treats each image on its
own; evaluation keeps whole batches, which suit ResNets and ViTs as well or better.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

CPU_CHUNK_PIXELS = 16 * 224 * 224  # images per chunk = this / (height * width), at least 1


def cpu_chunk_size(pixels: Tensor) -> int:
    """How many images of ``pixels`` ([B, C, H, W]) to forward at a time: all of them unless
    they are on the CPU."""
    if pixels.device.type != "cpu" or pixels.dim() != 4 or pixels.shape[-2:].numel() == 0:
        return len(pixels)
    return max(1, CPU_CHUNK_PIXELS // (pixels.shape[-2] * pixels.shape[-1]))


def forward_in_chunks(encode: Callable[[Tensor], Tensor], pixels: Tensor) -> Tensor:
    """``encode(pixels)``, computed :func:`cpu_chunk_size` images at a time."""
    size = cpu_chunk_size(pixels)
    if size >= len(pixels):
        return encode(pixels)
    return torch.cat([encode(chunk) for chunk in pixels.split(size)])
