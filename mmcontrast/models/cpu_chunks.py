"""Inference over image batches in small chunks on CPU, where big batches are slower.

A convolutional stem's output for a batch of 128 images at 224 px is about 100 MB. Blocks
that large come from fresh pages, zeroed on first touch and given back on free, so every
layer of every batch pays page faults, even after :mod:`mmcontrast.cpu_allocator` has told
glibc to keep freed memory. Forwarding a few images at a time keeps activations small
enough to reuse: EfficientNet-Lite0 on 2 cores runs about 2.5 times faster
(``scripts/bench_cpu_chunks.py``). In eval mode the result is the same up to float
rounding, so callers keep their batch size for data loading.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

CPU_CHUNK_PIXELS = 16 * 224 * 224  # images per chunk = this / (height * width), at least 1


def cpu_chunk_size(pixels: Tensor, device: torch.device | None = None) -> int:
    """How many images of ``pixels`` ([B, C, H, W]) to forward at a time on ``device``
    (default: where ``pixels`` are); all of them unless that is the CPU."""
    if (device or pixels.device).type != "cpu" or pixels.dim() != 4:
        return len(pixels)
    return max(1, CPU_CHUNK_PIXELS // (pixels.shape[-2] * pixels.shape[-1]))


def forward_in_chunks(
    encode: Callable[[Tensor], Tensor], pixels: Tensor, device: torch.device | None = None
) -> Tensor:
    """``encode(pixels)``, computed :func:`cpu_chunk_size` images at a time when ``device``
    (the model's; default: where ``pixels`` are) is the CPU."""
    size = cpu_chunk_size(pixels, device)
    if size >= len(pixels):
        return encode(pixels)
    return torch.cat([encode(chunk) for chunk in pixels.split(size)])
