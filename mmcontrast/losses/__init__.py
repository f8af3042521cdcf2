"""Contrastive losses, each an ``nn.Module`` usable on its own (``mmcontrast list losses``).

Every loss validates its hyper-parameters, documents its formula and paper, and is
tested against a float64 reference written from the paper. Losses with a
``gather_distributed`` option use negatives from every process with exact gradients
(see :mod:`mmcontrast.distributed`).
"""

import math

from mmcontrast.losses.barlow_twins import BarlowTwinsLoss
from mmcontrast.losses.clip import ClipLoss
from mmcontrast.losses.contrastive import ContrastiveLoss
from mmcontrast.losses.infonce import InfoNCELoss
from mmcontrast.losses.negative_cosine import NegativeCosineLoss
from mmcontrast.losses.npair import NPairLoss
from mmcontrast.losses.ntxent import NTXentLoss
from mmcontrast.losses.siglip import SigLipLoss
from mmcontrast.losses.supcon import SupConLoss
from mmcontrast.losses.swav import SwAVLoss, sinkhorn
from mmcontrast.losses.triplet import TripletLoss
from mmcontrast.registry import LOSSES

for _name, _cls, _summary in [
    ("clip", ClipLoss, "symmetric InfoNCE over image-text pairs (Radford et al. 2021)"),
    ("siglip", SigLipLoss, "pairwise sigmoid loss over image-text pairs (Zhai et al. 2023)"),
    ("infonce", InfoNCELoss, "InfoNCE with in-batch or queued negatives (CPC, MoCo)"),
    ("ntxent", NTXentLoss, "NT-Xent over two views (SimCLR, Chen et al. 2020)"),
    ("supcon", SupConLoss, "supervised contrastive, L_out or L_in (Khosla et al. 2020)"),
    ("contrastive", ContrastiveLoss, "margin loss on pairs (Hadsell, Chopra, LeCun 2006)"),
    ("triplet", TripletLoss, "triplet margin loss, optional batch-hard/all mining (FaceNet)"),
    ("npair", NPairLoss, "multi-class N-pair loss (Sohn 2016)"),
    ("negative_cosine", NegativeCosineLoss, "negative cosine, stop-gradient target (BYOL)"),
    ("barlow_twins", BarlowTwinsLoss, "cross-correlation to identity (Zbontar et al. 2021)"),
    ("swav", SwAVLoss, "swapped prediction of Sinkhorn codes (Caron et al. 2020)"),
]:
    LOSSES.register(_name, _summary)(_cls)

# Initial log logit scale and logit bias a dual encoder uses with each image-text loss.
LOSS_INIT: dict[str, tuple[float, float | None]] = {
    "clip": (math.log(1 / 0.07), None),
    "siglip": (math.log(10.0), -10.0),
}

__all__ = [
    "BarlowTwinsLoss",
    "ClipLoss",
    "ContrastiveLoss",
    "InfoNCELoss",
    "LOSS_INIT",
    "NPairLoss",
    "NTXentLoss",
    "NegativeCosineLoss",
    "SigLipLoss",
    "SupConLoss",
    "SwAVLoss",
    "TripletLoss",
    "sinkhorn",
]
