"""Towers, heads and the dual encoder. Importing this registers every tower source."""

from mmcontrast.models import (  # noqa: F401  (registration)
    hf_tower,
    open_clip_tower,
    small_backbones,
    timm_tower,
    torchvision_tower,
)
from mmcontrast.models.dual_encoder import DualEncoder, build_dual_encoder
from mmcontrast.models.tower import Tower, build_tower

__all__ = ["DualEncoder", "Tower", "build_dual_encoder", "build_tower"]
