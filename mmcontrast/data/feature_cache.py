"""Run a locked vision tower once over a table and keep its features (LiT-style training).

When the vision tower is fully locked and training images are not augmented, its output
for each image never changes: computing it once turns each training step into a text-tower
step. ``method.cache_locked_features`` in a recipe switches this on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmcontrast.data.image_text import image_batches
from mmcontrast.data.pairs import PairTable
from mmcontrast.models.cpu_chunks import forward_in_chunks
from mmcontrast.models.tower import Tower


@torch.inference_mode()
def compute_tower_features(
    tower: Tower,
    table: PairTable,
    transform: Callable[[Any], Tensor],
    batch_size: int = 128,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[Tensor, dict[int, str]]:
    """Features [len(table), width] (zeros for unreadable images) and the unreadable rows."""
    was_training = tower.training
    tower.eval()
    device = next(tower.parameters()).device
    features = torch.zeros(len(table), tower.width)
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
