"""Triplet loss, on given triplets or mined from a labelled batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast.losses.checks import require_choice, require_non_negative, require_same_shape
from mmcontrast.registry import LOSSES

DISTANCES = ("euclidean", "cosine")
MINING = (None, "batch_hard", "batch_all")


@LOSSES.register("triplet", "triplet margin loss, optional batch-hard/all mining (FaceNet)")
class TripletLoss(nn.Module):
    """An anchor must be closer to its positive than to its negative by ``margin``.

    ::

        loss = mean_i relu(d(a_i, p_i) - d(a_i, n_i) + margin)

    with ``d`` the Euclidean distance (not squared) or ``1 - cosine``.

    With ``mining`` the call is ``loss(embeddings, labels)`` (or ``labels=``) and triplets come from the
    batch: ``"batch_hard"`` takes, for each anchor, its farthest positive and nearest
    negative and averages over anchors that have both; ``"batch_all"`` averages over all
    valid triplets (a, p, n) whose loss is > 0 (the "positive triplets" convention of
    Hermans et al.; averaging over all triplets would let easy ones dilute it). Either is
    0 when the batch has no usable triplet. Batch-all builds an [N, N, N] tensor.

    References:
        Schroff, Kalenichenko and Philbin 2015, "FaceNet: A Unified Embedding for Face
        Recognition and Clustering", https://arxiv.org/abs/1503.03832 (eq. 1).
        Hermans, Beyer and Leibe 2017, "In Defense of the Triplet Loss for Person
        Re-Identification", https://arxiv.org/abs/1703.07737 (batch hard, batch all).

    Args:
        margin: >= 0.
        distance: ``"euclidean"`` or ``"cosine"``.
        mining: None (explicit triplets), ``"batch_hard"`` or ``"batch_all"``.

    Shapes:
        anchor, positive, negative: [N, D]; with mining, embeddings [N, D], labels [N].

    Raises:
        ValueError: for a bad option or mismatched shapes.

    Example:
        >>> loss_fn = TripletLoss(margin=0.2)
        >>> a, p, n = torch.randn(8, 16), torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = loss_fn(a, p, n)
        >>> mined = TripletLoss(mining="batch_hard")(torch.randn(8, 16), torch.arange(8) % 3)
    """

    def __init__(
        self, margin: float = 0.2, distance: str = "euclidean", mining: str | None = None
    ) -> None:
        super().__init__()
        require_non_negative("margin", margin)
        require_choice("distance", distance, DISTANCES)
        require_choice("mining", mining, MINING)
        self.margin = margin
        self.distance = distance
        self.mining = mining

    def forward(
        self,
        anchor: Tensor,
        positive: Tensor | None = None,
        negative: Tensor | None = None,
        *,
        labels: Tensor | None = None,
    ) -> Tensor:
        if self.mining is not None:
            labels = positive if labels is None else labels
            if labels is None or negative is not None:
                raise ValueError(f"mining={self.mining!r} takes (embeddings, labels), not triplets")
            return self._mined(anchor, labels)
        if positive is None or negative is None:
            raise ValueError("TripletLoss needs (anchor, positive, negative); or set mining=")
        require_same_shape(anchor=anchor, positive=positive, negative=negative)
        gaps = self._paired(anchor, positive) - self._paired(anchor, negative) + self.margin
        return torch.relu(gaps).mean()

    def _paired(self, x: Tensor, y: Tensor) -> Tensor:
        if self.distance == "cosine":
            return 1 - (F.normalize(x, dim=-1) * F.normalize(y, dim=-1)).sum(-1)
        return (x - y).norm(dim=-1)

    def _pairwise(self, x: Tensor) -> Tensor:
        if self.distance == "cosine":
            x = F.normalize(x, dim=-1)
            return 1 - x @ x.T
        precise = x if x.dtype == torch.float64 else x.float()  # cdist has no half kernels
        distances = torch.cdist(precise, precise, compute_mode="donot_use_mm_for_euclid_dist")
        return distances.to(x.dtype)

    def _mined(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if embeddings.dim() != 2 or tuple(labels.shape) != (embeddings.shape[0],):
            raise ValueError(
                f"mining needs embeddings [N, D] and labels [N], got {tuple(embeddings.shape)} "
                f"and {tuple(labels.shape)}"
            )
        distances = self._pairwise(embeddings)
        labels = labels.to(embeddings.device)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positive, negative = same & ~eye, ~same
        if self.mining == "batch_hard":
            hardest_positive = distances.masked_fill(~positive, float("-inf")).amax(1)
            hardest_negative = distances.masked_fill(~negative, float("inf")).amin(1)
            valid = positive.any(1) & negative.any(1)
            gaps = torch.relu(hardest_positive - hardest_negative + self.margin)
            return torch.where(valid, gaps, 0.0).sum() / valid.sum().clamp_min(1)
        gaps = distances[:, :, None] - distances[:, None, :] + self.margin  # [a, p, n]
        valid = positive[:, :, None] & negative[:, None, :]
        losses = torch.where(valid, torch.relu(gaps), 0.0)
        return losses.sum() / (losses > 0).sum().clamp_min(1)
