"""Training methods. Importing this registers every method in ``METHODS``."""

from mmcontrast.methods import clip  # noqa: F401  (registration)
from mmcontrast.methods.base import Method

__all__ = ["Method"]
