"""One batch made up front, served at every step: the training-loop benchmarks' data.

``scripts/bench_train.py`` and ``scripts/bench_finetune.py`` time mmcontrast's loop on the
model alone, as open_clip's synthetic-data trainer does: the dataset's indices cost
nothing, and its collate hands out the same pre-made batch (a new dict each time, since the
loop pops keys from it). The loop still moves the batch to the device at every step.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class PremadeBatch(Dataset):
    """``length`` indices whose :meth:`collate` returns ``batch``."""

    def __init__(self, batch: dict[str, torch.Tensor], length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return dict(self.batch)
