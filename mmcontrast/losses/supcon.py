"""Supervised contrastive loss (SupCon), both variants of the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.losses.checks import require_choice, require_dims, require_positive
from mmcontrast.losses.numerics import wide_mean
from mmcontrast.registry import LOSSES


@LOSSES.register("supcon", "supervised contrastive, L_out or L_in (Khosla et al. 2020)")
class SupConLoss(nn.Module):
    """Pull together all views of the same class, push apart the rest.

    Every one of the N*V views is an anchor ``a``. ``A(a)`` is every other view, ``P(a)``
    the views in ``A(a)`` with the anchor's label, and with L2-normalised ``z``::

        log_prob(a, p) = z_a.z_p / t - log sum_{b in A(a)} exp(z_a.z_b / t)
        L_out(a) = -(t / t_base) * mean_{p in P(a)} log_prob(a, p)
        L_in(a)  = -(t / t_base) * log mean_{p in P(a)} exp(log_prob(a, p))

    and the loss is the mean over all N*V anchors, where an anchor alone in its class
    (no positive) contributes 0 instead of NaN (as the official code and lightly do).
    ``L_in`` averages the positives inside the log, ``L_out`` outside; by Jensen
    ``L_in <= L_out``, and the paper finds ``L_out`` trains better (its gradient weighs
    every positive equally). With ``labels=None`` each image is its own class, so the
    positives are its other views: with V = 2 that is SimCLR's NT-Xent (scaled by
    t / t_base).

    Reference:
        Khosla et al. 2020, "Supervised Contrastive Learning",
        https://arxiv.org/abs/2004.11362 (eq. 2 is L_out, eq. 3 is L_in).

    Args:
        temperature: ``t`` > 0.
        base_temperature: ``t_base`` > 0; the loss is scaled by ``t / t_base``.
        variant: ``"out"`` (L_out, default) or ``"in"`` (L_in).
        gather_distributed: use every process's views as positives and negatives; the
            value and input gradients equal one process with the whole batch.

    Shapes:
        features: [N, V, D], V views of each of N images. labels: [N] integers, or None.

    Raises:
        ValueError: for bad hyper-parameters or shapes.

    Example:
        >>> loss_fn = SupConLoss(temperature=0.1)
        >>> loss = loss_fn(torch.randn(8, 2, 128), torch.randint(0, 3, (8,)))
    """

    def __init__(
        self,
        temperature: float = 0.07,
        base_temperature: float = 0.07,
        variant: str = "out",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        require_positive("temperature", temperature)
        require_positive("base_temperature", base_temperature)
        require_choice("variant", variant, ("out", "in"))
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.variant = variant
        self.gather_distributed = gather_distributed

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        require_dims("features", features, 3, "[N, V, D] (V views of each of N samples)")
        n, views, device = features.shape[0], features.shape[1], features.device
        if labels is not None and tuple(labels.shape) != (n,):
            raise ValueError(f"labels must have shape [{n}], got {tuple(labels.shape)}")
        labels = labels.to(device) if labels is not None else None
        features = F.normalize(features, dim=-1)
        gathered = self.gather_distributed and distributed.is_distributed()
        offset, total = distributed.local_offset(n, device) if gathered else (0, n)
        if labels is None:
            labels = torch.arange(offset, offset + n, device=device)
        all_features = distributed.gather_with_grad(features) if gathered else features
        all_labels = distributed.gather(labels) if gathered else labels

        anchors = features.flatten(0, 1)
        anchor_labels = labels.repeat_interleave(views)
        candidates = all_features.flatten(0, 1)
        candidate_labels = all_labels.repeat_interleave(views)
        logits = anchors @ candidates.T / self.temperature
        is_self = torch.zeros_like(logits, dtype=torch.bool)
        is_self[
            torch.arange(n * views, device=device),
            torch.arange(n * views, device=device) + offset * views,
        ] = True
        log_prob = torch.log_softmax(logits.masked_fill(is_self, float("-inf")), dim=1)
        positive = (anchor_labels[:, None] == candidate_labels[None, :]) & ~is_self
        count = positive.sum(1).to(logits.dtype)
        has_positive = count > 0
        if self.variant == "out":
            mean_log_prob = torch.where(positive, log_prob, 0.0).sum(1) / count.clamp_min(1)
        else:
            masked = torch.where(positive, log_prob, float("-inf"))
            masked = torch.where(has_positive[:, None], masked, 0.0)  # keep empty rows finite
            mean_log_prob = torch.logsumexp(masked, dim=1) - count.clamp_min(1).log()
        per_anchor = -(self.temperature / self.base_temperature) * mean_log_prob
        contributions = torch.where(has_positive, per_anchor, 0.0)
        share = wide_mean(contributions, total * views)
        return distributed.sum_shares(share) if gathered else share
