"""Pairwise sigmoid loss over image-text pairs (SigLIP).

Reference:
    Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training",
    https://arxiv.org/abs/2303.15343 (Algorithm 1). The model's logit scale starts at
    ln 10 and its bias at -10.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SigLipLoss(nn.Module):
    """Binary logistic loss on every image-text pair of the batch.

    With L2-normalised features ``I`` [N, D], ``T`` [N, D], multiplier ``s`` and bias ``b``::

        z = s * I @ T.T + b
        y = +1 on the diagonal (matching pairs), -1 elsewhere
        loss = -sum(logsigmoid(y * z)) / N

    Shapes:
        image_features: [N, D], L2-normalised.
        text_features: [N, D], L2-normalised.
        logit_scale: scalar tensor, the multiplier ``s`` (already exponentiated).
        logit_bias: scalar tensor ``b``.

    Example:
        >>> loss_fn = SigLipLoss()
        >>> img = F.normalize(torch.randn(8, 32), dim=-1)
        >>> txt = F.normalize(torch.randn(8, 32), dim=-1)
        >>> loss = loss_fn(img, txt, torch.tensor(10.0), torch.tensor(-10.0))
    """

    def forward(
        self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor, logit_bias: Tensor
    ) -> Tensor:
        if image_features.shape != text_features.shape:
            raise ValueError(
                f"image_features {tuple(image_features.shape)} and text_features "
                f"{tuple(text_features.shape)} must have the same shape [N, D]"
            )
        logits = logit_scale * image_features @ text_features.T + logit_bias
        n = logits.shape[0]
        signs = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
        return -F.logsigmoid(signs * logits).sum() / n
