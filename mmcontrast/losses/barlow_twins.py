"""Barlow Twins: make the cross-correlation of two views' embeddings the identity."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.losses.checks import require_non_negative, require_same_shape
from mmcontrast.registry import LOSSES

EPS = 1e-5  # BatchNorm's default, as in the paper's affine-free BatchNorm


@LOSSES.register("barlow_twins", "cross-correlation to identity (Zbontar et al. 2021)")
class BarlowTwinsLoss(nn.Module):
    """Invariance on the diagonal, redundancy reduction off it.

    Each dimension is standardised over the batch as BatchNorm does (biased variance,
    eps 1e-5), then with ``C = z_a^T z_b / N`` [D, D]::

        loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2

    Reference:
        Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
        Reduction", https://arxiv.org/abs/2103.03230 (eq. 1-2 and Algorithm 1).

    Args:
        lambda_param: weight of the off-diagonal term, >= 0 (the paper's 5e-3).
        gather_distributed: standardise and correlate over every process's batch; the
            value and input gradients equal one process with the whole batch.

    Shapes:
        z_a: [N, D], embeddings of the first views. z_b: [N, D], of the second. N >= 2.

    Raises:
        ValueError: for a negative ``lambda_param``, mismatched shapes or N < 2.

    Example:
        >>> loss_fn = BarlowTwinsLoss()
        >>> loss = loss_fn(torch.randn(16, 64), torch.randn(16, 64))
    """

    def __init__(self, lambda_param: float = 5e-3, gather_distributed: bool = False) -> None:
        super().__init__()
        require_non_negative("lambda_param", lambda_param)
        self.lambda_param = lambda_param
        self.gather_distributed = gather_distributed

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        require_same_shape(z_a=z_a, z_b=z_b)
        gathered = self.gather_distributed and distributed.is_distributed()
        if gathered:
            z_a, z_b = distributed.gather_with_grad(z_a), distributed.gather_with_grad(z_b)
        if z_a.shape[0] < 2:
            raise ValueError("Barlow Twins standardises over the batch: it needs N >= 2")
        c = _standardise(z_a).T @ _standardise(z_b) / z_a.shape[0]
        is_diagonal = torch.eye(c.shape[0], dtype=torch.bool, device=c.device)
        on_diagonal = (1 - torch.diagonal(c)).pow(2).sum()
        off_diagonal = c.masked_fill(is_diagonal, 0.0).pow(2).sum()
        loss = on_diagonal + self.lambda_param * off_diagonal
        # Every process computes the whole loss; each contributes 1/P of its gradient.
        return distributed.sum_shares(loss / distributed.world_size()) if gathered else loss


def _standardise(z: Tensor) -> Tensor:
    mean = z.mean(0)
    variance = z.var(0, unbiased=False)
    return (z - mean) / torch.sqrt(variance + EPS)
