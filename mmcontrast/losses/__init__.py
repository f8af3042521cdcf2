"""Contrastive losses, each an ``nn.Module`` usable on its own."""

import math

from mmcontrast.losses.clip import ClipLoss
from mmcontrast.losses.siglip import SigLipLoss
from mmcontrast.registry import LOSSES

LOSSES.register("clip", "symmetric InfoNCE over image-text pairs (Radford et al. 2021)")(ClipLoss)
LOSSES.register("siglip", "pairwise sigmoid loss over image-text pairs (Zhai et al. 2023)")(
    SigLipLoss
)

# Initial log logit scale and logit bias a dual encoder uses with each loss.
LOSS_INIT: dict[str, tuple[float, float | None]] = {
    "clip": (math.log(1 / 0.07), None),
    "siglip": (math.log(10.0), -10.0),
}

__all__ = ["ClipLoss", "SigLipLoss", "LOSS_INIT"]
