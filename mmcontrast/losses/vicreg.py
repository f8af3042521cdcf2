"""VICReg: invariance, variance and covariance terms on two views' embeddings."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.losses.checks import (
    require_dims,
    require_non_negative,
    require_positive,
    require_same_shape,
)
from mmcontrast.losses.numerics import wide_mean
from mmcontrast.registry import LOSSES


@LOSSES.register("vicreg", "variance-invariance-covariance regularisation (Bardes et al. 2022)")
class VICRegLoss(nn.Module):
    """Pull two views' embeddings together; keep every dimension's spread, decorrelate them.

    With ``z_a``, ``z_b`` [N, D]::

        s(Z_a, Z_b) = mean_{n, d} (z_a[n, d] - z_b[n, d])^2               (invariance)
        v(Z) = mean_d max(0, gamma - sqrt(Var_n(z[:, d]) + eps))          (variance)
        c(Z) = sum_{i != j} Cov(Z)_ij^2 / D                               (covariance)
        loss = lambda * s + mu * (v(Z_a) + v(Z_b)) / 2 + nu * (c(Z_a) + c(Z_b))

    ``Var`` and ``Cov`` are over the batch with the unbiased ``1 / (N - 1)``. The scale of
    the invariance and variance terms is the authors' code's (``main_vicreg.py``) and
    lightly's, for which lambda = mu = 25, nu = 1 were chosen: the paper's eq. 5 sums
    ``s`` over dimensions instead of averaging (D times larger) and eq. 6 adds the two
    variance terms instead of averaging them.

    Reference:
        Bardes, Ponce and LeCun 2022, "VICReg: Variance-Invariance-Covariance
        Regularization for Self-Supervised Learning", https://arxiv.org/abs/2105.04906
        (eq. 1-6 and Algorithm 1).

    Args:
        lambda_param: weight of the invariance term, >= 0 (the paper's 25).
        mu_param: weight of the variance term, >= 0 (25).
        nu_param: weight of the covariance term, >= 0 (1).
        gamma: the standard deviation each dimension is pushed up to, > 0 (1).
        eps: added to the variance under the square root, > 0 (1e-4): it bounds the
            gradient of a collapsed dimension.
        gather_distributed: compute the variance and covariance over every process's
            batch, as the paper does; the value and input gradients equal one process
            with the whole batch (the invariance term is per sample either way).

    Shapes:
        z_a: [N, D], embeddings of the first views. z_b: [N, D], of the second. N >= 2
        (over every process with ``gather_distributed``).

    Raises:
        ValueError: for a negative weight, ``gamma`` or ``eps`` not > 0, inputs that are
            not [N, D] of the same shape, or N < 2.

    Example:
        >>> loss_fn = VICRegLoss()
        >>> loss = loss_fn(torch.randn(16, 64), torch.randn(16, 64))
        >>> collapsed = torch.ones(16, 64)  # no spread: the variance term is all there is
        >>> round(loss_fn(collapsed, collapsed).item(), 4)  # 25 * (1 - sqrt(1e-4))
        24.75
    """

    def __init__(
        self,
        lambda_param: float = 25.0,
        mu_param: float = 25.0,
        nu_param: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        require_non_negative("lambda_param", lambda_param)
        require_non_negative("mu_param", mu_param)
        require_non_negative("nu_param", nu_param)
        require_positive("gamma", gamma)
        require_positive("eps", eps)
        self.lambda_param, self.mu_param, self.nu_param = lambda_param, mu_param, nu_param
        self.gamma, self.eps = gamma, eps
        self.gather_distributed = gather_distributed

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        require_dims("z_a", z_a, 2, "[N, D]")
        require_same_shape(z_a=z_a, z_b=z_b)
        squared_error = (z_a - z_b).pow(2)  # this process's rows only
        gathered = self.gather_distributed and distributed.is_distributed()
        if gathered:
            z_a, z_b = distributed.gather_with_grad(z_a), distributed.gather_with_grad(z_b)
        n, dims = z_a.shape
        if n < 2:
            raise ValueError("VICReg takes the variance over the batch: it needs N >= 2")
        invariance = wide_mean(squared_error, n * dims)  # this process's share of s
        variance = (self._variance(z_a) + self._variance(z_b)) / 2
        covariance = _covariance(z_a) + _covariance(z_b)
        regularisers = self.mu_param * variance + self.nu_param * covariance
        if not gathered:
            return self.lambda_param * invariance + regularisers
        # Every process computes the whole regularisers; each contributes 1/P of their
        # gradient. The invariance shares (own rows / all rows) sum to the whole term.
        share = self.lambda_param * invariance + regularisers / distributed.world_size()
        return distributed.sum_shares(share)

    def _variance(self, z: Tensor) -> Tensor:
        std = torch.sqrt(z.var(0) + self.eps)
        return torch.relu(self.gamma - std).mean()


def _covariance(z: Tensor) -> Tensor:
    """``c(Z)``: the squared off-diagonal entries of the batch covariance, over D."""
    n, dims = z.shape
    centred = z - z.mean(0)
    cov = centred.T @ centred / (n - 1)
    is_diagonal = torch.eye(dims, dtype=torch.bool, device=z.device)
    return cov.masked_fill(is_diagonal, 0.0).pow(2).sum() / dims
