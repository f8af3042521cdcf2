"""Supervised contrastive learning: labelled views, a projection MLP and SupCon's L_out.

Reference:
    Khosla et al. 2020, "Supervised Contrastive Learning", https://arxiv.org/abs/2004.11362.
    Stage two, a linear classifier on the frozen backbone, is this method's linear-probe
    evaluation (``eval.linear_probe``), or any recipe that loads the backbone's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmcontrast.config import Config
from mmcontrast.methods.vision import VisionMethod
from mmcontrast.models.heads import mlp
from mmcontrast.registry import METHODS


@dataclass
class SupConArgs:
    hidden_dim: int = 2048
    out_dim: int = 128
    temperature: float = 0.1
    use_labels: bool = True  # false: SimCLR's loss through SupCon (for comparison)


@METHODS.register("supcon", "supervised contrastive learning, L_out (Khosla et al. 2020)")
class SupCon(VisionMethod):
    args_class = SupConArgs
    loss_name = "supcon"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        a = self.args
        self.projector = mlp([self.backbone.width, a.hidden_dim, a.out_dim])
        temperature = self.cfg.loss.kwargs.get("temperature", a.temperature)
        self.loss_fn = self.build_loss(temperature=temperature, base_temperature=temperature)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        views: list[Tensor] = batch["views"]
        batch_size = views[0].shape[0]
        pixels = torch.cat(views)  # one backbone pass: BatchNorm sees every view
        z = self.projector(self.backbone(pixel_values=pixels))
        features = z.reshape(len(views), batch_size, -1).transpose(0, 1)  # [N, V, D]
        labels = batch["labels"] if self.args.use_labels else None
        return {"loss": self.loss_fn(features, labels)}
