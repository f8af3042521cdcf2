"""Towers, heads and the dual encoder. Importing this registers every tower source."""

from mmcontrast.models import hf_tower, open_clip_tower, timm_tower  # noqa: F401  (registration)
from mmcontrast.models.dual_encoder import DualEncoder, build_dual_encoder
from mmcontrast.models.tower import Tower, build_tower

__all__ = ["DualEncoder", "Tower", "build_dual_encoder", "build_tower"]
