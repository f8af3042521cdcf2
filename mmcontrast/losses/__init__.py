"""Contrastive losses, each an ``nn.Module`` usable on its own (``mmcontrast list losses``).

Every loss validates its hyper-parameters, documents its formula and paper, and is
tested against a float64 reference written from the paper. Losses with a
``gather_distributed`` option use negatives from every process with exact gradients
(see :mod:`mmcontrast.distributed`). Each registers itself in ``LOSSES`` where it is
defined; the image-text losses also carry the initial logit scale and bias of the dual
encoder they train (``init_logit_scale``, ``init_logit_bias``).
"""

from mmcontrast.losses.barlow_twins import BarlowTwinsLoss
from mmcontrast.losses.clip import ClipLoss
from mmcontrast.losses.contrastive import ContrastiveLoss
from mmcontrast.losses.dino import DINOLoss, update_center
from mmcontrast.losses.distill import ClipDistillLoss, FeatureDistillLoss, RelationalDistillLoss
from mmcontrast.losses.hard_negatives import NegClipLoss
from mmcontrast.losses.infonce import InfoNCELoss
from mmcontrast.losses.multi_positive import SigLipMultiPositiveLoss, UniClLoss
from mmcontrast.losses.nce import NCELoss
from mmcontrast.losses.negative_cosine import NegativeCosineLoss
from mmcontrast.losses.npair import NPairLoss
from mmcontrast.losses.ntxent import NTXentLoss
from mmcontrast.losses.siglip import SigLipLoss
from mmcontrast.losses.supcon import SupConLoss
from mmcontrast.losses.swav import SwAVLoss, sinkhorn
from mmcontrast.losses.triplet import TripletLoss
from mmcontrast.losses.vicreg import VICRegLoss

__all__ = [
    "BarlowTwinsLoss",
    "ClipDistillLoss",
    "ClipLoss",
    "ContrastiveLoss",
    "DINOLoss",
    "FeatureDistillLoss",
    "InfoNCELoss",
    "NCELoss",
    "NPairLoss",
    "NTXentLoss",
    "NegClipLoss",
    "NegativeCosineLoss",
    "RelationalDistillLoss",
    "SigLipLoss",
    "SigLipMultiPositiveLoss",
    "SupConLoss",
    "SwAVLoss",
    "TripletLoss",
    "UniClLoss",
    "VICRegLoss",
    "sinkhorn",
    "update_center",
]
