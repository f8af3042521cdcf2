"""Argument checks shared by the losses: clear ``ValueError``s for bad hyper-parameters."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import Tensor


def require_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def require_count(name: str, value: int, minimum: int = 1) -> None:
    """An integer (not a bool or a float) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def require_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def require_choice(name: str, value: object, choices: Iterable[object]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def require_same_shape(**tensors: Tensor) -> None:
    """All tensors have the same shape, else a message naming each one's shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"expected inputs of the same shape, got {listed}")


def require_dims(name: str, tensor: Tensor, dims: int, layout: str) -> None:
    if tensor.dim() != dims:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(tensor.shape)}")
