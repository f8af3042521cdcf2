"""The margin contrastive loss on pairs (siamese networks)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmcontrast.losses.checks import require_positive, require_same_shape
from mmcontrast.registry import LOSSES


@LOSSES.register("contrastive", "margin loss on pairs (Hadsell, Chopra, LeCun 2006)")
class ContrastiveLoss(nn.Module):
    """Pull matching pairs together; push others apart until they are ``margin`` away.

    With the Euclidean distance ``d_i = ||x1_i - x2_i||``::

        loss = mean_i 0.5 * (same_i * d_i^2 + (1 - same_i) * relu(margin - d_i)^2)

    Reference:
        Hadsell, Chopra and LeCun 2006, "Dimensionality Reduction by Learning an Invariant
        Mapping", CVPR 2006 (eq. 4, with Y = 0 for similar pairs written here as same = 1).

    Args:
        margin: the distance beyond which a non-matching pair costs nothing (> 0).

    Shapes:
        x1: [N, D]. x2: [N, D]. same: [N], 1 (or True) for a matching pair, 0 otherwise.

    Raises:
        ValueError: for a non-positive margin or mismatched shapes.

    Example:
        >>> loss_fn = ContrastiveLoss(margin=1.0)
        >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16), torch.randint(0, 2, (8,)))
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        require_positive("margin", margin)
        self.margin = margin

    def forward(self, x1: Tensor, x2: Tensor, same: Tensor) -> Tensor:
        require_same_shape(x1=x1, x2=x2)
        if tuple(same.shape) != (x1.shape[0],):
            raise ValueError(f"same must have shape [{x1.shape[0]}], got {tuple(same.shape)}")
        squared = (x1 - x2).pow(2).sum(-1)
        # sqrt's gradient is infinite at 0: take the root only where the distance is > 0.
        positive = squared > 0
        distance = torch.where(positive, torch.where(positive, squared, 1.0).sqrt(), 0.0)
        same = same.to(device=squared.device, dtype=squared.dtype)
        pull = same * squared
        push = (1 - same) * torch.relu(self.margin - distance).pow(2)
        return 0.5 * (pull + push).mean()
