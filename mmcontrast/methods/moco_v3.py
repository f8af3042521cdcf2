"""MoCo v3: no queue; a predictor on the query side, symmetric loss, momentum encoder.

Reference:
    Chen, Xie and He 2021, "An Empirical Study of Training Self-Supervised Vision
    Transformers", https://arxiv.org/abs/2104.02057 (Algorithm 1: the loss
    ``ctr(q1, k2) + ctr(q2, k1)`` with ``ctr = 2 t * CE(q @ k.T / t)`` and keys from every
    process; momentum rising from 0.99 to 1 along a cosine).
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
class MoCoV3Args:
    hidden_dim: int = 4096
    out_dim: int = 256
    base_momentum: float = 0.99  # rises to 1.0 along a cosine over training
    temperature: float = 1.0  # 1.0 for ResNets, 0.2 for ViTs in the paper


@METHODS.register(
    "moco_v3", "MoCo v3: predictor, symmetric loss, momentum encoder (Chen et al. 2021)"
)
class MoCoV3(VisionMethod):
    args_class = MoCoV3Args
    loss_name = "infonce"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        a = self.args
        dims = [self.backbone.width, a.hidden_dim, a.hidden_dim, a.out_dim]
        self.projector = mlp(dims, last_batch_norm=True)
        self.predictor = mlp([a.out_dim, a.hidden_dim, a.out_dim])
        self.momentum_encoder = frozen_copy(Projected(self.backbone, self.projector))
        self.loss_fn = self.build_loss(temperature=a.temperature)
        self.temperature = float(self.loss_fn.temperature)  # type: ignore[arg-type]

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0, x1 = batch["views"][:2]
        q0 = self.predictor(self.projector(self.backbone(pixel_values=x0)))
        q1 = self.predictor(self.projector(self.backbone(pixel_values=x1)))
        with torch.no_grad():
            k0, k1 = self.momentum_encoder(x0), self.momentum_encoder(x1)
        scale = 2 * self.temperature
        loss = scale * (self.loss_fn(q0, k1) + self.loss_fn(q1, k0))
        return {"loss": loss}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        super().after_optimizer_step(step, total_steps)
        momentum = cosine_momentum(step, total_steps, self.args.base_momentum)
        ema_update(self.momentum_encoder, Projected(self.backbone, self.projector), momentum)
