"""SwAV: predict one view's cluster assignment (Sinkhorn codes) from another view."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.losses.checks import require_count, require_positive
from mmcontrast.registry import LOSSES


@torch.no_grad()
def sinkhorn(
    scores: Tensor, epsilon: float = 0.05, iterations: int = 3, gather_distributed: bool = False
) -> Tensor:
    """Soft equipartitioned codes ``Q`` [B, K] from prototype scores [B, K] (no gradient).

    ``Q = exp(scores / epsilon)``, normalised to sum 1, then ``iterations`` rounds of
    scaling each prototype's total to 1/K and each sample's total to 1/B; rows are
    returned summing to 1. With ``gather_distributed`` the sums run over every process's
    samples. Computed in the log domain (so no score range underflows) and in at least
    float32.
    """
    require_positive("epsilon", epsilon)
    require_count("iterations", iterations)
    scores = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    gathered = gather_distributed and distributed.is_distributed()
    log_q = (scores / epsilon).T  # [K, B]
    prototypes = log_q.shape[0]
    count = torch.tensor(float(log_q.shape[1]), dtype=log_q.dtype, device=log_q.device)
    log_batch = (distributed.all_reduce_sum(count) if gathered else count).log()
    log_q = log_q - _logsumexp(log_q.reshape(1, -1), gathered)
    for _ in range(iterations):
        log_q = log_q - _logsumexp(log_q, gathered) - math.log(prototypes)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_batch
    return (log_q + log_batch).exp().T


def _logsumexp(x: Tensor, gathered: bool) -> Tensor:
    """``logsumexp`` over dim 1 (the samples), across processes when ``gathered``."""
    if not gathered:
        return torch.logsumexp(x, dim=1, keepdim=True)
    if x.shape[1]:
        top = x.amax(dim=1, keepdim=True)
    else:
        top = x.new_full((x.shape[0], 1), float("-inf"))
    top = distributed.all_reduce_max(top)
    total = distributed.all_reduce_sum(torch.exp(x - top).sum(dim=1, keepdim=True))
    return top + total.log()


@LOSSES.register("swav", "swapped prediction of Sinkhorn codes (Caron et al. 2020)")
class SwAVLoss(nn.Module):
    """Swapped prediction between the codes of the global views and every other view.

    For each global (high-resolution) view ``i`` the codes ``q_i`` = Sinkhorn-Knopp of
    its prototype scores (no gradient). Every other view ``v``, global or low-resolution,
    predicts them::

        l(i, v) = mean over the batch of -sum_k q_i[k] * log_softmax(scores_v / t)[k]
        loss = mean_i ( mean_{v != i} l(i, v) )

    Reference:
        Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
        Assignments", https://arxiv.org/abs/2006.09882 (eq. 1-3, Algorithm 1 and the
        distributed Sinkhorn-Knopp of its appendix).

    Args:
        temperature: ``t`` > 0 of the prediction's softmax.
        sinkhorn_iterations: Sinkhorn-Knopp rounds (>= 1).
        epsilon: entropy regularisation of the codes (> 0); smaller is sharper.
        gather_distributed: Sinkhorn's sums and the batch mean run over every process;
            the value and input gradients equal one process with the whole batch.

    Shapes:
        high_res_scores: sequence of [B, K], one per global view (at least one).
        low_res_scores: sequence of [B, K], one per low-resolution crop (may be empty).
        queue_scores: optional sequence (one per global view) of [Q, K] scores of earlier
            batches' features against the current prototypes; they join the Sinkhorn
            problem (more samples for the equipartition) and are not predicted.

    Raises:
        ValueError: for bad hyper-parameters, or fewer than two views in all.

    Example:
        >>> loss_fn = SwAVLoss()
        >>> globals_ = [torch.randn(8, 30), torch.randn(8, 30)]
        >>> locals_ = [torch.randn(8, 30) for _ in range(4)]
        >>> loss = loss_fn(globals_, locals_)
    """

    def __init__(
        self,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        epsilon: float = 0.05,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        require_positive("temperature", temperature)
        require_count("sinkhorn_iterations", sinkhorn_iterations)
        require_positive("epsilon", epsilon)
        self.temperature = temperature
        self.sinkhorn_iterations = sinkhorn_iterations
        self.epsilon = epsilon
        self.gather_distributed = gather_distributed

    def forward(
        self,
        high_res_scores: Sequence[Tensor],
        low_res_scores: Sequence[Tensor] = (),
        queue_scores: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        views = [*high_res_scores, *low_res_scores]
        if not high_res_scores or len(views) < 2:
            raise ValueError("SwAV needs at least one global view and two views in all")
        if len({tuple(v.shape) for v in views}) > 1:
            raise ValueError(
                f"every view's scores must be [B, K]; got {[tuple(v.shape) for v in views]}"
            )
        if queue_scores is not None and len(queue_scores) != len(high_res_scores):
            raise ValueError("queue_scores needs one entry (or None) per global view")
        gathered = self.gather_distributed and distributed.is_distributed()
        batch = views[0].shape[0]
        total = distributed.local_offset(batch, views[0].device)[1] if gathered else batch
        log_probs = [torch.log_softmax(v / self.temperature, dim=1) for v in views]
        per_global = []
        for i, scores in enumerate(high_res_scores):
            queued = queue_scores[i] if queue_scores is not None else None
            problem = (
                scores.detach() if queued is None else torch.cat([queued.detach(), scores.detach()])
            )
            codes = sinkhorn(problem, self.epsilon, self.sinkhorn_iterations, gathered)
            codes = codes[codes.shape[0] - batch :].to(log_probs[i].dtype)
            terms = [-(codes * lp).sum() for v, lp in enumerate(log_probs) if v != i]
            per_global.append(torch.stack(terms).mean())
        share = torch.stack(per_global).mean() / total
        return distributed.sum_shares(share) if gathered else share
