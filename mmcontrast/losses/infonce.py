"""InfoNCE with explicit or in-batch negatives (CPC, MoCo)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.losses.checks import require_positive, require_same_shape
from mmcontrast.losses.numerics import wide_mean
from mmcontrast.registry import LOSSES


@LOSSES.register("infonce", "InfoNCE with in-batch or queued negatives (CPC, MoCo)")
class InfoNCELoss(nn.Module):
    """Cross-entropy of each query against its positive key among negatives.

    Inputs are L2-normalised inside. For query ``q_i``, positive key ``k_i`` and
    negatives ``n_1..n_M``::

        loss_i = -log( exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_m exp(q_i.n_m / t)) )
        loss = mean_i loss_i

    With ``negative_keys=None`` the negatives of ``q_i`` are the other queries' positive
    keys (``k_j``, j != i): a cross-entropy over the [N, N] similarity matrix. With
    ``negative_keys`` [M, D] every query shares those negatives (MoCo's queue: pass the
    queue there; keys from a momentum encoder carry no gradient); with [N, M, D] each
    query has its own M negatives.

    References:
        van den Oord et al. 2018, "Representation Learning with Contrastive Predictive
        Coding", https://arxiv.org/abs/1807.03748 (eq. 4).
        He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning",
        https://arxiv.org/abs/1911.05722 (Algorithm 1: negatives from a queue of keys).

    Args:
        temperature: ``t`` > 0.
        gather_distributed: with in-batch negatives, use every process's keys; the value
            and input gradients equal one process with the whole batch. With explicit
            negative keys only the averaging is global (the keys are already shared).

    Shapes:
        query: [N, D]. positive_key: [N, D]. negative_keys: [M, D], [N, M, D] or None.

    Raises:
        ValueError: for a non-positive temperature or mismatched shapes.

    Example:
        >>> loss_fn = InfoNCELoss(temperature=0.2)
        >>> q, k, queue = torch.randn(8, 32), torch.randn(8, 32), torch.randn(4096, 32)
        >>> loss = loss_fn(q, k, queue)
    """

    def __init__(self, temperature: float = 0.07, gather_distributed: bool = False) -> None:
        super().__init__()
        require_positive("temperature", temperature)
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(
        self, query: Tensor, positive_key: Tensor, negative_keys: Tensor | None = None
    ) -> Tensor:
        require_same_shape(query=query, positive_key=positive_key)
        query, positive_key = F.normalize(query, dim=-1), F.normalize(positive_key, dim=-1)
        gathered = self.gather_distributed and distributed.is_distributed()
        offset, total = 0, query.shape[0]
        if gathered:
            offset, total = distributed.local_offset(query.shape[0], query.device)
        if negative_keys is None:
            keys = distributed.gather_with_grad(positive_key) if gathered else positive_key
            logits = query @ keys.T
            labels = torch.arange(offset, offset + query.shape[0], device=query.device)
        else:
            negatives = F.normalize(negative_keys, dim=-1)
            positive = (query * positive_key).sum(-1, keepdim=True)
            if negatives.dim() == 2:
                negative = query @ negatives.T
            elif negatives.dim() == 3 and negatives.shape[0] == query.shape[0]:
                negative = torch.einsum("nd,nmd->nm", query, negatives)
            else:
                raise ValueError(
                    f"negative_keys must be [M, D] or [N, M, D] with N = {query.shape[0]}, "
                    f"got shape {tuple(negative_keys.shape)}"
                )
            logits = torch.cat([positive, negative], dim=1)
            labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
        per_query = F.cross_entropy(logits / self.temperature, labels, reduction="none")
        share = wide_mean(per_query, total)
        return distributed.sum_shares(share) if gathered else share
