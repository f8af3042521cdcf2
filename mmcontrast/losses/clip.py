"""Symmetric InfoNCE over image-text pairs (CLIP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.losses.checks import require_same_shape
from mmcontrast.losses.numerics import wide_mean


class ClipLoss(nn.Module):
    """Symmetric cross-entropy over the image-text similarity matrix.

    With L2-normalised features ``I`` [N, D], ``T`` [N, D] and multiplier ``s``::

        logits = s * I @ T.T
        loss = (CE(logits, arange(N)) + CE(logits.T, arange(N))) / 2

    Pair ``i`` is the positive of row ``i``; the other N-1 entries of the row are negatives.

    Reference:
        Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
        Supervision", https://arxiv.org/abs/2103.00020 (pseudocode in Figure 3).

    Args:
        gather_distributed: use every process's pairs as negatives. The value on each
            process is then the loss of the whole batch, and each feature's gradient is
            the one it has in a single process with the whole batch. ``logit_scale``,
            replicated on every process, gets this process's share of its gradient: the
            shares sum to the whole-batch gradient (as a gradient all-reduce sums them);
            see :mod:`mmcontrast.distributed`.
        local_loss: with ``gather_distributed``, compute only this process's rows and
            columns of the global matrix ([B, N] instead of [N, N]; open_clip's
            ``local_loss``). Same value and feature gradients, less compute.

    Shapes:
        image_features: [N, D], L2-normalised.
        text_features: [N, D], L2-normalised.
        logit_scale: scalar tensor, the multiplier ``s`` (already exponentiated).

    Raises:
        ValueError: if the two feature tensors differ in shape.

    Example:
        >>> loss_fn = ClipLoss()
        >>> img = F.normalize(torch.randn(8, 32), dim=-1)
        >>> txt = F.normalize(torch.randn(8, 32), dim=-1)
        >>> loss = loss_fn(img, txt, torch.tensor(100.0))
    """

    def __init__(self, gather_distributed: bool = False, local_loss: bool = False) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed
        self.local_loss = local_loss

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
        require_same_shape(image_features=image_features, text_features=text_features)
        if not (self.gather_distributed and distributed.is_distributed()):
            return _symmetric_ce(logit_scale * image_features @ text_features.T)
        all_images = distributed.gather_with_grad(image_features)
        all_texts = distributed.gather_with_grad(text_features)
        if not self.local_loss:
            logits = logit_scale * all_images @ all_texts.T
            return distributed.sum_shares(_symmetric_ce(logits) / distributed.world_size())
        offset, total = distributed.local_offset(image_features.shape[0], image_features.device)
        labels = torch.arange(
            offset, offset + image_features.shape[0], device=image_features.device
        )
        per_image = F.cross_entropy(
            logit_scale * image_features @ all_texts.T, labels, reduction="none"
        )
        per_text = F.cross_entropy(
            logit_scale * text_features @ all_images.T, labels, reduction="none"
        )
        return distributed.sum_shares(wide_mean(torch.cat([per_image, per_text]), 2 * total))


def _symmetric_ce(logits: Tensor) -> Tensor:
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
