"""Multi-class N-pair loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast.losses.checks import require_non_negative, require_same_shape
from mmcontrast.registry import LOSSES


@LOSSES.register("npair", "multi-class N-pair loss (Sohn 2016)")
class NPairLoss(nn.Module):
    """Each anchor must pick its own positive among the N positives of the batch.

    Unnormalised inner products (no temperature), then cross-entropy::

        loss = CE(anchors @ positives.T, arange(N))
               + l2_reg * mean over the 2N inputs of their squared norm

    The regulariser keeps the embedding norms, which the inner products reward, bounded.

    Reference:
        Sohn 2016, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective",
        NeurIPS 2016 (eq. 6 with the embedding-norm regulariser of section 3.2.2).

    Args:
        l2_reg: weight of the norm regulariser, >= 0 (Sohn uses small values, e.g. 0.002).

    Shapes:
        anchors: [N, D]. positives: [N, D], row ``i`` the positive of anchor ``i``.

    Raises:
        ValueError: for a negative ``l2_reg`` or mismatched shapes.

    Example:
        >>> loss_fn = NPairLoss(l2_reg=0.002)
        >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16))
    """

    def __init__(self, l2_reg: float = 0.0) -> None:
        super().__init__()
        require_non_negative("l2_reg", l2_reg)
        self.l2_reg = l2_reg

    def forward(self, anchors: Tensor, positives: Tensor) -> Tensor:
        require_same_shape(anchors=anchors, positives=positives)
        labels = torch.arange(anchors.shape[0], device=anchors.device)
        loss = F.cross_entropy(anchors @ positives.T, labels)
        if self.l2_reg:
            squared_norms = torch.cat([anchors, positives]).pow(2).sum(-1)
            loss = loss + self.l2_reg * squared_norms.mean()
        return loss
