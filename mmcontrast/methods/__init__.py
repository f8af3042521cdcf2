"""Training methods: each file registers its method in ``METHODS`` where it is defined.

``build_method(cfg)`` instantiates a recipe's method; ``load_trained(folder)`` rebuilds a
trained one from a run, checkpoint or export folder, for evaluation and export.
"""

from mmcontrast.methods.base import Method, build_method
from mmcontrast.methods.trained import load_trained

__all__ = ["Method", "build_method", "load_trained"]
