"""MoCo v2: a momentum key encoder and a queue of negative keys, with InfoNCE.

References:
    He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation
    Learning", https://arxiv.org/abs/1911.05722 (Algorithm 1).
    Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning",
    https://arxiv.org/abs/2003.04297 (MLP head, stronger augmentation, t = 0.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcontrast import distributed
from mmcontrast.config import Config
from mmcontrast.methods.vision import VisionMethod
from mmcontrast.models.heads import Projected, mlp
from mmcontrast.models.momentum import ema_update, frozen_copy
from mmcontrast.registry import METHODS


@dataclass
class MoCoV2Args:
    hidden_dim: int = 2048
    out_dim: int = 128
    queue_size: int = 65536  # negatives kept from earlier batches (a multiple of the batch)
    momentum: float = 0.999  # key encoder EMA
    temperature: float = 0.2
    symmetric: bool = False  # also use view 2 as query (the loss of both directions, averaged)
    shuffle_bn: bool = True  # several processes: keys through shuffling BN (paper, 3.3)


@METHODS.register("moco_v2", "MoCo v2: momentum key encoder, queue of negatives (He et al. 2020)")
class MoCoV2(VisionMethod):
    args_class = MoCoV2Args
    loss_name = "infonce"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        a = self.args
        if a.queue_size % cfg.train.batch_size:
            raise ValueError(
                f"method_args.queue_size ({a.queue_size}) must be a multiple of "
                f"train.batch_size ({cfg.train.batch_size}) so batches tile the queue"
            )
        self.projector = mlp([self.backbone.width, a.hidden_dim, a.out_dim], batch_norm=False)
        self.key_encoder = frozen_copy(Projected(self.backbone, self.projector))
        self.loss_fn = self.build_loss(temperature=a.temperature)
        self.queue: Tensor
        self.queue_ptr: Tensor
        self.register_buffer("queue", F.normalize(torch.randn(a.queue_size, a.out_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0, x1 = batch["views"][:2]
        with torch.no_grad():
            k1 = F.normalize(self._keys(x1), dim=1)
        q0 = self.projector(self.backbone(pixel_values=x0))
        negatives = self.queue.clone()
        loss = self.loss_fn(q0, k1, negatives)
        keys = [k1]
        if self.args.symmetric:
            with torch.no_grad():
                k0 = F.normalize(self._keys(x0), dim=1)
            q1 = self.projector(self.backbone(pixel_values=x1))
            loss = (loss + self.loss_fn(q1, k0, negatives)) / 2
            keys.append(k0)
        for key in keys:
            self._enqueue(distributed.gather(key))
        return {"loss": loss}

    def _keys(self, views: Tensor) -> Tensor:
        if self.args.shuffle_bn:
            return distributed.shuffled_forward(self.key_encoder, views)
        return self.key_encoder(views)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        """Replace the oldest keys with ``keys`` (wrapping around the queue's end)."""
        size = self.queue.shape[0]
        index = (int(self.queue_ptr) + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[index] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + keys.shape[0]) % size)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        super().after_optimizer_step(step, total_steps)
        ema_update(self.key_encoder, Projected(self.backbone, self.projector), self.args.momentum)
