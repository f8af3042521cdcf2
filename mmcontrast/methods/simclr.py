"""SimCLR: two augmented views, a projection MLP and the NT-Xent loss.

Reference:
    Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations", https://arxiv.org/abs/2002.05709.
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
class SimCLRArgs:
    hidden_dim: int = 2048  # projection MLP: width -> hidden_dim -> out_dim
    out_dim: int = 128
    temperature: float = 0.5  # NT-Xent (loss.kwargs.temperature overrides)
    batch_norm: bool = True  # in the projection MLP; its statistics are per process


@METHODS.register("simclr", "SimCLR: two views, projection MLP, NT-Xent (Chen et al. 2020)")
class SimCLR(VisionMethod):
    args_class = SimCLRArgs
    loss_name = "ntxent"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        a = self.args
        self.projector = mlp([self.backbone.width, a.hidden_dim, a.out_dim], a.batch_norm)
        self.loss_fn = self.build_loss(temperature=a.temperature)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0, x1 = batch["views"][:2]
        z0 = self.projector(self.backbone(pixel_values=x0))
        z1 = self.projector(self.backbone(pixel_values=x1))
        return {"loss": self.loss_fn(z0, z1)}
