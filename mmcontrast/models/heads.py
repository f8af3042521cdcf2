"""Projection heads mapping a tower's features into the shared embedding space."""

from __future__ import annotations

from torch import Tensor, nn


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


def mlp(
    dims: list[int], batch_norm: bool = True, last_batch_norm: bool = False, bias: bool = True
) -> nn.Sequential:
    """Linear layers through ``dims`` with BatchNorm + ReLU between them.

    The projection and prediction heads of the vision recipes: e.g. SimCLR
    ``mlp([512, 2048, 128])``, MoCo v3's projector with ``last_batch_norm=True`` (an
    affine-free BatchNorm on the output), Barlow Twins' three-layer projector.
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {dims}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=bias and not (batch_norm and not last)))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True))
        elif last_batch_norm:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


class Projected(nn.Module):
    """``head(backbone(pixel_values))``: an encoder whose copy becomes a momentum target."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.head(self.backbone(pixel_values=pixel_values))
