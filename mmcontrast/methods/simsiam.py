"""SimSiam: a predictor regresses the other view's projection behind a stop-gradient.

No negatives and no momentum encoder: both views go through the same backbone and
projector, and the stop-gradient on the target branch (inside ``negative_cosine``) is what
prevents collapse.

Reference:
    Chen and He 2021, "Exploring Simple Siamese Representation Learning",
    https://arxiv.org/abs/2011.10566 (Algorithm 1; projector of three linear layers with
    BatchNorm on each output, ReLU between them and none after the last; predictor a
    2048-512-2048 bottleneck with BatchNorm and ReLU on its hidden layer).

The paper keeps the predictor's learning rate fixed while the rest decays (section 4.1 and
Table 1c): ``fix_predictor_lr`` (on by default) declares it through
``Method.fixed_lr_prefixes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from mmcontrast.config import Config
from mmcontrast.methods.vision import VisionMethod
from mmcontrast.models.heads import mlp
from mmcontrast.registry import METHODS


@dataclass
class SimSiamArgs:
    hidden_dim: int = 2048  # projector: width -> hidden_dim -> hidden_dim -> out_dim
    out_dim: int = 2048
    predictor_dim: int = 512  # predictor: out_dim -> predictor_dim -> out_dim
    fix_predictor_lr: bool = True  # the predictor's lr stays at its base value (the paper)


@METHODS.register(
    "simsiam", "SimSiam: predictor, stop-gradient, negative cosine (Chen and He 2021)"
)
class SimSiam(VisionMethod):
    """Symmetric negative cosine between each view's prediction and the other's projection.

    Per view ``x`` [B, 3, H, W]: ``z = projector(backbone(x))`` [B, out_dim] and
    ``p = predictor(z)`` [B, out_dim]; ``loss = (D(p0, z1) + D(p1, z0)) / 2`` with
    ``D(p, z) = -cos(p, stopgrad(z))``, between -1 and 1.
    """

    args_class = SimSiamArgs
    loss_name = "negative_cosine"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        a = self.args
        dims = [self.backbone.width, a.hidden_dim, a.hidden_dim, a.out_dim]
        # no biases: every linear layer feeds a BatchNorm, the last an affine-free one
        self.projector = mlp(dims, last_batch_norm=True, bias=False)
        self.predictor = mlp([a.out_dim, a.predictor_dim, a.out_dim])
        self.loss_fn = self.build_loss()

    def fixed_lr_prefixes(self) -> tuple[str, ...]:
        return ("predictor.",) if self.args.fix_predictor_lr else ()

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0, x1 = batch["views"][:2]
        z0 = self.projector(self.backbone(pixel_values=x0))
        z1 = self.projector(self.backbone(pixel_values=x1))
        p0, p1 = self.predictor(z0), self.predictor(z1)
        loss = (self.loss_fn(p0, z1) + self.loss_fn(p1, z0)) / 2  # the loss detaches z
        # the paper's collapse monitor (Figure 2): 0 when collapsed, about out_dim**-0.5 when not
        output_std = F.normalize(z0.detach(), dim=1).std(0).mean()
        return {"loss": loss, "output_std": output_std}
