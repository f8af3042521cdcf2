"""Pairwise sigmoid loss over image-text pairs (SigLIP)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmcontrast import distributed
from mmcontrast.losses.checks import require_count, require_same_shape
from mmcontrast.registry import LOSSES


@LOSSES.register("siglip", "pairwise sigmoid loss over image-text pairs (Zhai et al. 2023)")
class SigLipLoss(nn.Module):
    """Binary logistic loss on every image-text pair of the batch.

    With L2-normalised features ``I`` [N, D], ``T`` [N, D], multiplier ``s`` and bias ``b``::

        z = s * I @ T.T + b
        y = +1 on the diagonal (matching pairs), -1 elsewhere
        loss = -sum(logsigmoid(y * z)) / N

    Reference:
        Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training",
        https://arxiv.org/abs/2303.15343 (Algorithm 1). The model's logit scale starts at
        ln 10 and its bias at -10.

    Args:
        gather_distributed: use every process's texts as negatives of this process's
            images; the value and the feature gradients equal one process with the whole
            batch (``logit_scale`` and ``logit_bias`` get this process's share).
        chunk_size: if set, go through the texts ``chunk_size`` at a time and recompute
            each chunk in the backward pass, so no more than [N, chunk_size] logits are
            ever held (forward or backward). Same value and gradients.

    Shapes:
        image_features: [N, D], L2-normalised.
        text_features: [N, D], L2-normalised.
        logit_scale: scalar tensor, the multiplier ``s`` (already exponentiated).
        logit_bias: scalar tensor ``b``.

    Raises:
        ValueError: if ``chunk_size`` is not positive or the feature shapes differ.

    Example:
        >>> loss_fn = SigLipLoss()
        >>> img = F.normalize(torch.randn(8, 32), dim=-1)
        >>> txt = F.normalize(torch.randn(8, 32), dim=-1)
        >>> loss = loss_fn(img, txt, torch.tensor(10.0), torch.tensor(-10.0))
    """

    # A dual encoder trained with this loss starts from these (log scale, bias).
    init_logit_scale: ClassVar[float] = math.log(10.0)
    init_logit_bias: ClassVar[float | None] = -10.0
    title: ClassVar[str] = "pairwise sigmoid (SigLIP)"  # how model cards name the loss

    def __init__(self, gather_distributed: bool = False, chunk_size: int | None = None) -> None:
        super().__init__()
        if chunk_size is not None:
            require_count("chunk_size", chunk_size)
        self.gather_distributed = gather_distributed
        self.chunk_size = chunk_size

    def forward(
        self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor, logit_bias: Tensor
    ) -> Tensor:
        require_same_shape(image_features=image_features, text_features=text_features)
        texts, offset, total = text_features, 0, image_features.shape[0]
        gathered = self.gather_distributed and distributed.is_distributed()
        if gathered:
            texts = distributed.gather_with_grad(text_features)
            offset, total = distributed.local_offset(image_features.shape[0], image_features.device)
        chunk = self.chunk_size or max(texts.shape[0], 1)
        accumulate = torch.promote_types(image_features.dtype, torch.float32)  # fp16 overflows
        loss_sum = image_features.new_zeros((), dtype=accumulate)
        for start in range(0, texts.shape[0], chunk):
            args = (image_features, texts[start : start + chunk], logit_scale, logit_bias)
            if self.chunk_size is None:
                loss_sum = loss_sum + _block_loss(*args, offset - start)
            else:
                loss_sum = loss_sum + checkpoint(
                    _block_loss, *args, offset - start, use_reentrant=False
                )
        share = (loss_sum / max(total, 1)).to(image_features.dtype)
        return distributed.sum_shares(share) if gathered else share


def _block_loss(
    images: Tensor, texts: Tensor, logit_scale: Tensor, logit_bias: Tensor, diagonal_offset: int
) -> Tensor:
    """-sum(logsigmoid(y * z)) over a block; image ``i`` matches text ``i + offset``."""
    logits = logit_scale * images @ texts.T + logit_bias
    rows = torch.arange(images.shape[0], device=logits.device)
    cols = torch.arange(texts.shape[0], device=logits.device)
    positive = cols[None, :] == rows[:, None] + diagonal_offset
    signs = torch.where(positive, 1.0, -1.0).to(logits.dtype)
    return -F.logsigmoid(signs * logits).sum(dtype=torch.promote_types(logits.dtype, torch.float32))
