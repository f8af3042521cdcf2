"""Barlow Twins: a BatchNorm projector whose two views' cross-correlation nears identity.

Reference:
    Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
    Reduction", https://arxiv.org/abs/2103.03230 (projector of three 8192-wide linear
    layers, the first two with BatchNorm and ReLU; lambda 5e-3).
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
class BarlowTwinsArgs:
    projector_dims: list[int] | None = None  # default [8192, 8192, 8192]
    lambda_param: float = 5e-3


@METHODS.register(
    "barlow_twins", "Barlow Twins: cross-correlation to identity (Zbontar et al. 2021)"
)
class BarlowTwins(VisionMethod):
    args_class = BarlowTwinsArgs
    loss_name = "barlow_twins"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        dims = self.args.projector_dims or [8192, 8192, 8192]
        self.projector = mlp([self.backbone.width, *dims])
        self.loss_fn = self.build_loss(lambda_param=self.args.lambda_param)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0, x1 = batch["views"][:2]
        z0 = self.projector(self.backbone(pixel_values=x0))
        z1 = self.projector(self.backbone(pixel_values=x1))
        return {"loss": self.loss_fn(z0, z1)}
