"""BYOL: an online network with a predictor regresses an EMA target's projections.

Reference:
    Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
    Learning", https://arxiv.org/abs/2006.07733 (symmetric loss, target momentum rising
    from 0.99 to 1 along a cosine, asymmetric augmentations: blur 1.0 / 0.1, solarise
    0.0 / 0.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmcontrast.config import Config
from mmcontrast.methods.vision import VisionMethod
from mmcontrast.models.heads import Projected, mlp
from mmcontrast.models.momentum import cosine_momentum, ema_update, frozen_copy
from mmcontrast.registry import METHODS


@dataclass
class BYOLArgs:
    hidden_dim: int = 4096
    out_dim: int = 256
    base_momentum: float = 0.99  # target EMA, rising to 1.0 along a cosine


@METHODS.register("byol", "BYOL: predictor, EMA target, negative cosine (Grill et al. 2020)")
class BYOL(VisionMethod):
    args_class = BYOLArgs
    loss_name = "negative_cosine"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        a = self.args
        self.projector = mlp([self.backbone.width, a.hidden_dim, a.out_dim])
        self.predictor = mlp([a.out_dim, a.hidden_dim, a.out_dim])
        self.target = frozen_copy(Projected(self.backbone, self.projector))
        self.loss_fn = self.build_loss()

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0, x1 = batch["views"][:2]
        p0 = self.predictor(self.projector(self.backbone(pixel_values=x0)))
        p1 = self.predictor(self.projector(self.backbone(pixel_values=x1)))
        with torch.no_grad():
            t0, t1 = self.target(x0), self.target(x1)
        loss = self.loss_fn(p0, t1) + self.loss_fn(p1, t0)
        return {"loss": loss}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        super().after_optimizer_step(step, total_steps)
        momentum = cosine_momentum(step, total_steps, self.args.base_momentum)
        ema_update(self.target, Projected(self.backbone, self.projector), momentum)
