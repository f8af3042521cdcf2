"""SwAV: swapped prediction of Sinkhorn cluster codes across multi-crop views.

Reference:
    Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments", https://arxiv.org/abs/2006.09882 (prototypes normalised every step and
    frozen for the first iterations; 2 global + N low-resolution crops; an optional queue
    of earlier embeddings for small batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast.config import Config
from mmcontrast.methods.vision import VisionMethod
from mmcontrast.models.heads import mlp
from mmcontrast.registry import METHODS


@dataclass
class SwAVArgs:
    hidden_dim: int = 2048
    out_dim: int = 128
    prototypes: int = 3000
    freeze_prototypes_steps: int = 313  # prototypes get no gradient before this step
    queue_size: int = 0  # embeddings kept per global view (0: no queue; paper: 3840)
    queue_start_step: int = 0  # use the queue from this step on, once it is full
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3


@METHODS.register(
    "swav", "SwAV: Sinkhorn codes, swapped prediction, multi-crop (Caron et al. 2020)"
)
class SwAV(VisionMethod):
    args_class = SwAVArgs
    loss_name = "swav"
    uses_local_views = True

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        a = self.args
        self.projector = mlp([self.backbone.width, a.hidden_dim, a.out_dim])
        self.prototypes = nn.Linear(a.out_dim, a.prototypes, bias=False)
        self.loss_fn = self.build_loss(
            temperature=a.temperature,
            epsilon=a.epsilon,
            sinkhorn_iterations=a.sinkhorn_iterations,
        )
        if a.queue_size % cfg.train.batch_size:
            raise ValueError(
                f"method_args.queue_size ({a.queue_size}) must be 0 or a multiple of "
                f"train.batch_size ({cfg.train.batch_size})"
            )
        self.queue: Tensor
        self.register_buffer("queue", torch.zeros(2, a.queue_size, a.out_dim))

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        with torch.no_grad():  # prototypes live on the unit sphere
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        weight = self.prototypes.weight
        if int(self.steps_done) < self.args.freeze_prototypes_steps:
            weight = weight.detach()
        views: list[Tensor] = batch["views"]
        embeddings = [
            F.normalize(self.projector(self.backbone(pixel_values=v)), dim=1) for v in views
        ]
        scores = [z @ weight.T for z in embeddings]
        queue_scores = None
        if self._queue_ready():
            queue_scores = [q @ weight.detach().T for q in self.queue]
        loss = self.loss_fn(scores[:2], scores[2:], queue_scores)
        if self.args.queue_size:
            self._push(embeddings[:2])
        return {"loss": loss}

    def _queue_ready(self) -> bool:
        """A queue is used once asked for, past ``queue_start_step``, and full."""
        return (
            self.args.queue_size > 0
            and int(self.steps_done) >= self.args.queue_start_step
            and bool(self.queue[:, -1].any())
        )

    @torch.no_grad()
    def _push(self, embeddings: list[Tensor]) -> None:
        """Shift each global view's queue and put this batch's embeddings in front."""
        size = embeddings[0].shape[0]
        self.queue[:, size:] = self.queue[:, :-size].clone()
        self.queue[:, :size] = torch.stack(embeddings).detach().to(self.queue.dtype)
