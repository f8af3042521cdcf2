"""NCE against a memory bank: the non-parametric softmax of instance discrimination."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.losses.checks import require_choice, require_dims, require_positive
from mmcontrast.losses.numerics import wide_mean
from mmcontrast.registry import LOSSES


@LOSSES.register("nce", "NCE against a memory bank (instance discrimination, PIRL)")
class NCELoss(nn.Module):
    """Noise-contrastive estimation of the non-parametric softmax over a memory bank.

    Each query ``q_i`` (L2-normalised inside) belongs to row ``y_i`` of a bank ``V`` [N, D]
    of unit rows. Wu et al. model ``P(i | q) = exp(v_i.q / t) / Z`` and, with K negatives
    ``v_j`` drawn uniformly (noise ``P_n = 1/N``), NCE's posterior that a pair is data::

        h(i, q) = P(i | q) / (P(i | q) + K / N)
        loss_i  = -log h(y_i, q_i) - sum_{j in negatives of i} log(1 - h(j, q_i))
        loss    = mean_i loss_i

    ``Z`` is a constant: Wu et al. estimate it once, from the first batch, as
    ``N * mean(exp(s / t))`` over that batch's positive and negative scores (of every
    process). Pass ``log_z`` to use a kept one (:meth:`estimate_log_z`; the caller keeps it,
    so that a resumed run uses the same); without it, each call estimates its own.
    Computed in log space: with ``x = s / t - log Z - log(K/N)``, ``-log h = softplus(x) - x``
    and ``-log(1 - h) = softplus(x)``.

    ``estimator="softmax"`` computes the exact softmax over every row instead (Wu et al.,
    eq. 2, with the bank as the weights): ``loss_i = -log softmax(V q_i / t)[y_i]``; it
    takes no negatives and no ``Z``.

    The bank is an input (a :class:`~mmcontrast.models.memory_bank.MemoryBank`'s
    ``features``, unit rows, not renormalised here) and gets no gradient; the loss keeps
    no state. Each query's loss uses its own negatives only, so the mean over this
    process's queries is its share, and data-parallel averaging of the gradients gives
    the whole batch's gradient.

    References:
        Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance
        Discrimination", https://arxiv.org/abs/1805.01978 (eq. 2, 5-7; K = 4096, t = 0.07).
        Misra & van der Maaten 2020, "Self-Supervised Learning of Pretext-Invariant
        Representations", https://arxiv.org/abs/1912.01991 (eq. 4; N = 32,000 negatives).
        Gutmann & Hyvarinen 2010, "Noise-contrastive estimation: A new estimation
        principle for unnormalized statistical models".

    Args:
        temperature: ``t`` > 0.
        estimator: ``"nce"`` (K sampled negatives, constant Z) or ``"softmax"`` (every row).

    Shapes:
        query: [B, D]. bank: [N, D]. positive_index: [B] long (``y``).
        negative_index: [B, K] long, each query's own negatives, or [K], negatives shared by
        the batch (``"nce"``); None (``"softmax"``).
        log_z: a 0-dim tensor, ``log Z`` (``"nce"``; None: estimated from this batch; every
        process must then call the loss, since the estimate gathers).

    Raises:
        ValueError: for a non-positive temperature, an unknown estimator, bad shapes, or
            negatives given to (or missing from) the estimator that does (not) take them.

    Example:
        >>> loss_fn = NCELoss(temperature=0.07)
        >>> bank = F.normalize(torch.randn(1000, 16), dim=1)
        >>> query, rows = torch.randn(8, 16), torch.arange(8)
        >>> negatives = torch.randint(1000, (8, 64))
        >>> log_z = loss_fn.estimate_log_z(query, bank, rows, negatives)
        >>> loss = loss_fn(query, bank, rows, negatives, log_z)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.07, estimator: str = "nce") -> None:
        super().__init__()
        require_positive("temperature", temperature)
        require_choice("estimator", estimator, ("nce", "softmax"))
        self.temperature = temperature
        self.estimator = estimator

    def _check(self, query: Tensor, bank: Tensor, positive_index: Tensor) -> None:
        require_dims("query", query, 2, "[B, D]")
        require_dims("bank", bank, 2, "[N, D]")
        if bank.shape[1] != query.shape[1] or positive_index.shape != query.shape[:1]:
            raise ValueError(
                f"expected query [B, D], bank [N, D] and positive_index [B], got "
                f"{tuple(query.shape)}, {tuple(bank.shape)} and {tuple(positive_index.shape)}"
            )

    def scores(
        self, query: Tensor, bank: Tensor, positive_index: Tensor, negative_index: Tensor
    ) -> Tensor:
        """``s / t`` of each query with its positive row, then its negatives: [B, 1 + K]."""
        positive, negative = self._scores(query, bank, positive_index, negative_index)
        return torch.cat([positive[:, None], negative], dim=1)

    def _scores(
        self, query: Tensor, bank: Tensor, positive_index: Tensor, negative_index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(``s / t`` with the positive row [B], with the negatives [B, K])."""
        self._check(query, bank, positive_index)
        query = F.normalize(query, dim=-1) / self.temperature
        bank = bank.detach()
        positive = (query * bank[positive_index].to(query.dtype)).sum(-1)
        if negative_index.dim() == 1:  # [K] shared by every query: one matrix product
            return positive, query @ bank[negative_index].to(query.dtype).T
        if negative_index.dim() != 2 or negative_index.shape[0] != query.shape[0]:
            raise ValueError(
                f"negative_index must be [B, K] with B = {query.shape[0]}, or [K], "
                f"got {tuple(negative_index.shape)}"
            )
        weights = bank[negative_index].to(query.dtype)  # [B, K, D]
        return positive, torch.einsum("bd,bkd->bk", query, weights)

    def estimate_log_z(
        self, query: Tensor, bank: Tensor, positive_index: Tensor, negative_index: Tensor
    ) -> Tensor:
        """``log Z = log N + log mean(exp(s / t))`` over this batch's scores and every
        process's (the same value on each), as Wu et al. estimate ``Z``."""
        with torch.no_grad():
            scores = self._scores(query, bank, positive_index, negative_index)
        return self._log_z(*scores, bank.shape[0])

    @staticmethod
    @torch.no_grad()
    def _log_z(positive: Tensor, negative: Tensor, rows: int) -> Tensor:
        scores = torch.cat([positive.detach()[:, None], negative.detach()], dim=1).double()
        count = torch.tensor(float(scores.numel()), dtype=scores.dtype, device=scores.device)
        local = torch.stack([torch.logsumexp(scores.flatten(), 0), count.log()])
        everything = distributed.gather(local[None])  # [P, 2]: log-sum and log-count
        log_mean = torch.logsumexp(everything[:, 0], 0) - torch.logsumexp(everything[:, 1], 0)
        return (log_mean + math.log(rows)).to(positive.dtype)

    def forward(
        self,
        query: Tensor,
        bank: Tensor,
        positive_index: Tensor,
        negative_index: Tensor | None = None,
        log_z: Tensor | None = None,
    ) -> Tensor:
        if self.estimator == "softmax":
            if negative_index is not None or log_z is not None:
                raise ValueError("estimator 'softmax' uses every bank row: pass no negatives or Z")
            self._check(query, bank, positive_index)
            logits = F.normalize(query, dim=-1) @ bank.detach().to(query.dtype).T
            per_query = F.cross_entropy(logits / self.temperature, positive_index, reduction="none")
            return wide_mean(per_query, query.shape[0])
        if negative_index is None:
            raise ValueError("estimator 'nce' needs negative_index [B, K] (bank rows)")
        positive, negative = self._scores(query, bank, positive_index, negative_index)
        if log_z is None:
            log_z = self._log_z(positive, negative, bank.shape[0])
        # x = a - log(K P_n) with a = s / t - log Z: -log h = softplus(x) - x and
        # -log(1 - h) = softplus(x), so loss_i = sum_k softplus(x_ik) - x_i0 (k = 0..K)
        shift = log_z.detach().to(positive.dtype) + math.log(
            negative_index.shape[-1] / bank.shape[0]
        )
        x_positive, x_negative = positive - shift, negative - shift
        per_query = F.softplus(x_negative).sum(1) + F.softplus(x_positive) - x_positive
        return wide_mean(per_query, query.shape[0])
