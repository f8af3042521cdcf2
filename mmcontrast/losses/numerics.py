"""Numerical helpers shared by the losses."""

from __future__ import annotations

import torch
from torch import Tensor


def wide_mean(x: Tensor, count: int) -> Tensor:
    """``x.sum() / count`` summed in at least float32 (float16 sums of big batches overflow)."""
    wide = x.sum(dtype=torch.promote_types(x.dtype, torch.float32))
    return (wide / max(count, 1)).to(x.dtype)
