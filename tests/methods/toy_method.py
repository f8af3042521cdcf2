"""A method written outside the package, as a user would add one: this file is the whole
method (the test beside it adds a recipe and trains it through the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from mmcontrast.config import Config
from mmcontrast.methods.vision import VisionMethod
from mmcontrast.registry import METHODS


@dataclass
class ToyArgs:
    out_dim: int = 8


@METHODS.register("toy_siamese", "two views, a linear projection and NT-Xent (a test method)")
class ToySiamese(VisionMethod):
    args_class = ToyArgs
    loss_name = "ntxent"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.projector = nn.Linear(self.backbone.width, self.args.out_dim)
        self.loss_fn = self.build_loss(temperature=0.5)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0, x1 = batch["views"][:2]
        z0 = self.projector(self.backbone(pixel_values=x0))
        z1 = self.projector(self.backbone(pixel_values=x1))
        return {"loss": self.loss_fn(z0, z1)}
