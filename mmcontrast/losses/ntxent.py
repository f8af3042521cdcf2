"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.losses.checks import require_positive, require_same_shape
from mmcontrast.losses.numerics import wide_mean
from mmcontrast.registry import LOSSES


@LOSSES.register("ntxent", "NT-Xent over two views (SimCLR, Chen et al. 2020)")
class NTXentLoss(nn.Module):
    """SimCLR's loss over 2N views: each view must pick its pair among the other 2N-1.

    With ``z = concat(z0, z1)`` (L2-normalised inside), cosine similarities and
    ``p(k)`` the other view of the same image::

        loss_k = -log( exp(z_k.z_p(k) / t) / sum_{m != k} exp(z_k.z_m / t) )
        loss = mean over the 2N anchors k

    Reference:
        Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
        Representations", https://arxiv.org/abs/2002.05709 (Algorithm 1, eq. 1).

    Args:
        temperature: ``t`` > 0 (SimCLR uses 0.5 at batch 256, 0.1 at 4096).
        gather_distributed: use every process's views as negatives; the value and input
            gradients equal one process with the whole batch.

    Shapes:
        z0: [N, D], the first view of each image. z1: [N, D], the second.

    Raises:
        ValueError: for a non-positive temperature or mismatched shapes.

    Example:
        >>> loss_fn = NTXentLoss(temperature=0.5)
        >>> loss = loss_fn(torch.randn(8, 128), torch.randn(8, 128))
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__()
        require_positive("temperature", temperature)
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        require_same_shape(z0=z0, z1=z1)
        z0, z1 = F.normalize(z0, dim=-1), F.normalize(z1, dim=-1)
        gathered = self.gather_distributed and distributed.is_distributed()
        n, device = z0.shape[0], z0.device
        offset, total = distributed.local_offset(n, device) if gathered else (0, n)
        all0 = distributed.gather_with_grad(z0) if gathered else z0
        all1 = distributed.gather_with_grad(z1) if gathered else z1
        anchors = torch.cat([z0, z1])
        logits = anchors @ torch.cat([all0, all1]).T / self.temperature
        local = torch.arange(offset, offset + n, device=device)
        self_index = torch.cat([local, local + total])
        positive_index = torch.cat([local + total, local])
        is_self = torch.zeros_like(logits, dtype=torch.bool)
        is_self[torch.arange(2 * n, device=device), self_index] = True
        logits = logits.masked_fill(is_self, float("-inf"))
        per_anchor = F.cross_entropy(logits, positive_index, reduction="none")
        share = wide_mean(per_anchor, 2 * total)
        return distributed.sum_shares(share) if gathered else share
