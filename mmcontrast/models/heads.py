"""Projection heads mapping a tower's features into the shared embedding space."""

from __future__ import annotations

from torch import nn


def build_projection(
    kind: str, in_dim: int, out_dim: int, hidden_dim: int | None = None
) -> nn.Module:
    """``linear`` (no bias, as in CLIP), ``mlp`` (Linear-GELU-Linear) or ``none`` (identity)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim, bias=False)
    if kind == "mlp":
        hidden = hidden_dim or max(in_dim, out_dim)
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    if kind == "none":
        if in_dim != out_dim:
            raise ValueError(
                f"projection 'none' needs the tower width ({in_dim}) to equal model.embed_dim ({out_dim}); "
                f"set model.embed_dim: {in_dim} or use projection: linear"
            )
        return nn.Identity()
    raise ValueError(f"unknown projection {kind!r}; choose linear, mlp or none")
