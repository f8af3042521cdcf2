"""Training methods. Importing this registers every method in ``METHODS``."""

from mmcontrast.methods import (  # noqa: F401  (registration)
    barlow_twins,
    byol,
    clip,
    moco_v2,
    moco_v3,
    simclr,
    supcon,
    swav,
)
from mmcontrast.methods.base import Method

__all__ = ["Method"]
