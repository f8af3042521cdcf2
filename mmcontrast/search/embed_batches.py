"""Batches of a collection's rows for embedding: whole shards, never one batch across two.

One data loader reads every shard still to do, so its workers keep decoding images across
shard boundaries; a batch never mixes two shards, so a shard's embeddings come from the
same batches whether it is computed in a clean run or a resumed one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset, Sampler

from mmcontrast.data.images import BadSample, load_image
from mmcontrast.search.embed_sources import Collection

__all__ = ["CollectionRows", "ShardBatches", "shard_range"]

Sample = tuple[int, Tensor | str, str, str | None]  # row, pixels or why unreadable, key, caption


def shard_range(index: int, shard_size: int, rows: int) -> tuple[int, int]:
    """Rows ``[start, end)`` of shard ``index``."""
    return index * shard_size, min((index + 1) * shard_size, rows)


class CollectionRows(Dataset):
    """``(row, pixels, key, caption)``, or the reason in place of pixels for a bad image."""

    def __init__(self, collection: Collection, transform: Callable[[Any], Tensor]) -> None:
        self.collection, self.transform = collection, transform

    def __len__(self) -> int:
        return len(self.collection)

    def __getitem__(self, row: int) -> Sample:
        entry = self.collection.entry(row)
        pixels: Tensor | str
        try:
            pixels = self.transform(load_image(entry.image))
        except BadSample as bad:
            pixels = bad.reason
        return row, pixels, entry.key, entry.caption


class ShardBatches(Sampler[list[int]]):
    """Row batches of the given shards, in order; each shard's last batch may be short."""

    def __init__(self, shards: Sequence[int], shard_size: int, rows: int, batch_size: int) -> None:
        self.shards, self.shard_size, self.rows = list(shards), shard_size, rows
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for index in self.shards:
            start, end = shard_range(index, self.shard_size, self.rows)
            for first in range(start, end, self.batch_size):
                yield list(range(first, min(first + self.batch_size, end)))

    def __len__(self) -> int:
        total = 0
        for index in self.shards:
            start, end = shard_range(index, self.shard_size, self.rows)
            total += -(-(end - start) // self.batch_size)
        return total
