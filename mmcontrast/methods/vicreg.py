"""VICReg: an expander whose two views' embeddings agree, keep their spread, decorrelate.

No negatives, no predictor, no stop-gradient and no momentum encoder: the variance and
covariance terms of the loss prevent collapse.

Reference:
    Bardes, Ponce and LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization
    for Self-Supervised Learning", https://arxiv.org/abs/2105.04906 (expander of three
    8192-wide linear layers, the first two with BatchNorm and ReLU; lambda = mu = 25,
    nu = 1; variance and covariance over every GPU's batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from mmcontrast.config import Config
from mmcontrast.methods.vision import VisionMethod
from mmcontrast.models.heads import mlp
from mmcontrast.registry import METHODS


@dataclass
class VICRegArgs:
    expander_dims: list[int] | None = None  # default [8192, 8192, 8192]
    lambda_param: float = 25.0  # invariance weight (loss.kwargs.lambda_param overrides)
    mu_param: float = 25.0  # variance weight
    nu_param: float = 1.0  # covariance weight


@METHODS.register("vicreg", "VICReg: variance, invariance, covariance (Bardes et al. 2022)")
class VICReg(VisionMethod):
    """``vicreg(expander(backbone(x0)), expander(backbone(x1)))`` for two views [B, 3, H, W];
    the embeddings are [B, expander_dims[-1]]."""

    args_class = VICRegArgs
    loss_name = "vicreg"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        a = self.args
        dims = a.expander_dims or [8192, 8192, 8192]
        # no biases: the hidden layers feed a BatchNorm, and the paper's last layer has none
        self.expander = mlp([self.backbone.width, *dims], bias=False)
        self.loss_fn = self.build_loss(
            lambda_param=a.lambda_param, mu_param=a.mu_param, nu_param=a.nu_param
        )

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0, x1 = batch["views"][:2]
        z0 = self.expander(self.backbone(pixel_values=x0))
        z1 = self.expander(self.backbone(pixel_values=x1))
        return {"loss": self.loss_fn(z0, z1)}
