"""Symmetric InfoNCE over image-text pairs (CLIP).

Reference:
    Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
    Supervision", https://arxiv.org/abs/2103.00020 (pseudocode in Figure 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClipLoss(nn.Module):
    """Symmetric cross-entropy over the image-text similarity matrix.

    With L2-normalised features ``I`` [N, D], ``T`` [N, D] and multiplier ``s``::

        logits = s * I @ T.T
        loss = (CE(logits, arange(N)) + CE(logits.T, arange(N))) / 2

    Pair ``i`` is the positive of row ``i``; the other N-1 entries of the row are negatives.

    Shapes:
        image_features: [N, D], L2-normalised.
        text_features: [N, D], L2-normalised.
        logit_scale: scalar tensor, the multiplier ``s`` (already exponentiated).

    Example:
        >>> loss_fn = ClipLoss()
        >>> img = F.normalize(torch.randn(8, 32), dim=-1)
        >>> txt = F.normalize(torch.randn(8, 32), dim=-1)
        >>> loss = loss_fn(img, txt, torch.tensor(100.0))
    """

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
        if image_features.shape != text_features.shape:
            raise ValueError(
                f"image_features {tuple(image_features.shape)} and text_features "
                f"{tuple(text_features.shape)} must have the same shape [N, D]"
            )
        logits = logit_scale * image_features @ text_features.T
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
