"""Negative cosine similarity with a stop-gradient target (BYOL, SimSiam)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast.losses.checks import require_same_shape
from mmcontrast.registry import LOSSES


@LOSSES.register("negative_cosine", "negative cosine, stop-gradient target (BYOL)")
class NegativeCosineLoss(nn.Module):
    """Minus the mean cosine similarity between predictions and (detached) targets.

    ::

        loss = -mean_i cos(prediction_i, stopgrad(target_i))

    The stop-gradient is applied here: ``target`` is detached inside, so no gradient
    reaches it even if it requires one (the target branch of BYOL/SimSiam). For the
    symmetric loss, call it twice with the views swapped and average.

    References:
        Grill et al. 2020, "Bootstrap Your Own Latent", https://arxiv.org/abs/2006.07733
        (eq. 2: 2 - 2 cos, the same loss up to an affine map).
        Chen and He 2021, "Exploring Simple Siamese Representation Learning",
        https://arxiv.org/abs/2011.10566 (eq. 1 and the stop-gradient of eq. 3).

    Shapes:
        prediction: [N, D]. target: [N, D].

    Raises:
        ValueError: if the shapes differ.

    Example:
        >>> loss_fn = NegativeCosineLoss()
        >>> loss = loss_fn(torch.randn(8, 256), torch.randn(8, 256))
    """

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        require_same_shape(prediction=prediction, target=target)
        prediction = F.normalize(prediction, dim=-1)
        target = F.normalize(target.detach(), dim=-1)
        return -(prediction * target).sum(-1).mean()
