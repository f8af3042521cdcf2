"""Towers, heads and the dual encoder. Each tower family registers its builder in ``TOWERS``
in its own file; ``build_tower`` finds them through the registry's discovery."""

from mmcontrast.models.dual_encoder import DualEncoder, build_dual_encoder
from mmcontrast.models.tower import Tower, build_tower

__all__ = ["DualEncoder", "Tower", "build_dual_encoder", "build_tower"]
