"""DINO's projection head: an MLP, an L2-normalised bottleneck, weight-normalised prototypes.

Reference:
    Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
    https://arxiv.org/abs/2104.14294 (section 3.1 and appendix: a 3-layer MLP of hidden
    size 2048 with GELU, an l2-normalised bottleneck of 256, then a weight-normalised
    linear layer to K = 65536 dimensions; no BatchNorm in the ViT head, BatchNorm in the
    ResNet-50 one). The official code fixes the weight norm's gain to 1 (``norm_last_layer``)
    and initialises the MLP's linear layers from a truncated normal (std 0.02), zero biases.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WeightNormLinear(nn.Module):
    """``x @ (g * v / ||v||).T`` without bias: each output row has norm ``g`` (Salimans &
    Kingma 2016, as ``torch.nn.utils.weight_norm(nn.Linear(...), dim=0)`` computes it).

    ``v`` starts as ``nn.Linear``'s weight does and ``g`` at 1; ``trainable_gain=False``
    keeps ``g`` at 1, so every prototype stays a unit vector (DINO's ``norm_last_layer``).
    ``forward(x, frozen=True)`` lets no gradient reach ``v`` or ``g`` (DINO's
    ``freeze_last_layer``): the optimiser then leaves them untouched, as a ``None`` grad.

    Shapes:
        x: [N, in_dim] -> [N, out_dim].
    """

    def __init__(self, in_dim: int, out_dim: int, trainable_gain: bool = False) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))  # nn.Linear's initialisation
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=trainable_gain)

    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        weight = self.weight()
        return F.linear(x, weight.detach() if frozen else weight)


class DINOHead(nn.Module):
    """``last_layer(normalize(mlp(x)))``: ``[N, in_dim] -> [N, out_dim]``.

    Args:
        in_dim: The backbone's feature width.
        out_dim: ``K``, the number of prototypes (paper: 65536; 60000 for ResNet-50).
        hidden_dim: Width of the MLP's hidden layers (2048).
        bottleneck_dim: Width of the L2-normalised bottleneck (256).
        layers: Linear layers of the MLP (3); 1 maps straight to the bottleneck.
        batch_norm: BatchNorm after each hidden linear layer (the ResNet-50 head).
        norm_last_layer: Keep the last layer's weight-norm gain at 1.

    Raises:
        ValueError: ``layers`` < 1 or a width < 1.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if layers < 1 or min(in_dim, out_dim, hidden_dim, bottleneck_dim) < 1:
            raise ValueError(
                f"a DINO head needs layers >= 1 and positive widths; got layers={layers}, "
                f"dims in={in_dim} hidden={hidden_dim} bottleneck={bottleneck_dim} out={out_dim}"
            )
        dims = [in_dim, *[hidden_dim] * (layers - 1), bottleneck_dim]
        modules: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            modules.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                if batch_norm:
                    modules.append(nn.BatchNorm1d(d_out))
                modules.append(nn.GELU())
        self.mlp = nn.Sequential(*modules)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, not norm_last_layer)

    def forward(self, x: Tensor, freeze_last_layer: bool = False) -> Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(z, frozen=freeze_last_layer)
