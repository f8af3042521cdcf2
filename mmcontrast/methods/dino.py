"""DINO: a student matches an EMA teacher's centred, sharpened softmax across multi-crop views.

Reference:
    Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
    https://arxiv.org/abs/2104.14294 (Algorithm 1; section 3.1: the teacher sees the 2
    global views, the student every view; the teacher's output is centred by an EMA of its
    batch means (momentum 0.9) and sharpened by a temperature warmed up from 0.04 to 0.07,
    the student's temperature is 0.1; teacher momentum 0.996 rising to 1 along a cosine;
    the head of :mod:`mmcontrast.models.dino_head`, its last layer frozen in the first epoch).

Schedules count optimiser steps: the teacher temperature rises linearly over
``warmup_teacher_temperature_steps`` (the official code holds it per epoch), and the last
layer gets no gradient for the first ``freeze_last_layer_steps`` (no update at all: no
momentum, no weight decay; DDP then needs ``train.find_unused_parameters``, on by default).
Each step logs its ``teacher_temperature``. The center is a buffer: checkpoints hold it and ``--resume`` is
exact. The trained model (evaluated and exported) is the teacher's backbone, as in the
paper. Weight decay is constant (``train.weight_decay``); the paper's ViT runs raise it
along a cosine from 0.04 to 0.4, which the optimiser setup here does not schedule.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from mmcontrast.config import Config
from mmcontrast.losses.dino import update_center
from mmcontrast.methods.vision import VisionMethod
from mmcontrast.models.dino_head import DINOHead
from mmcontrast.models.heads import Projected
from mmcontrast.models.momentum import cosine_momentum, ema_update, frozen_copy
from mmcontrast.models.tower import Tower
from mmcontrast.registry import METHODS


@dataclass
class DINOArgs:
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    out_dim: int = 65536  # K prototypes (60000 in the ResNet-50 run)
    head_layers: int = 3
    batch_norm: bool = False  # BatchNorm in the head's MLP (true for ResNet-50 in the paper)
    norm_last_layer: bool = True  # the prototypes' weight-norm gain fixed to 1
    freeze_last_layer_steps: int = 1252  # no gradient to the prototypes before (1 epoch)
    student_temperature: float = 0.1
    teacher_temperature: float = 0.07  # reached after the warm-up
    warmup_teacher_temperature: float = 0.04
    warmup_teacher_temperature_steps: int = 37560  # 30 ImageNet epochs at batch 1024
    center_momentum: float = 0.9
    base_momentum: float = 0.996  # teacher EMA, rising to 1.0 along a cosine


@METHODS.register(
    "dino", "DINO: self-distillation, EMA teacher, centring + sharpening (Caron et al. 2021)"
)
class DINO(VisionMethod):
    args_class = DINOArgs
    loss_name = "dino"
    uses_local_views = True

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        a = self.args
        for key in ("freeze_last_layer_steps", "warmup_teacher_temperature_steps"):
            if getattr(a, key) < 0:
                raise ValueError(f"method_args.{key} must be >= 0, got {getattr(a, key)}")
        if not 0.0 <= a.center_momentum < 1.0:
            raise ValueError(
                f"method_args.center_momentum must be in [0, 1), got {a.center_momentum}"
            )
        if not 0.0 <= a.base_momentum <= 1.0:
            raise ValueError(f"method_args.base_momentum must be in [0, 1], got {a.base_momentum}")
        if a.warmup_teacher_temperature <= 0:
            raise ValueError(
                f"method_args.warmup_teacher_temperature must be > 0, got {a.warmup_teacher_temperature}"
            )
        self.head = DINOHead(
            self.backbone.width,
            a.out_dim,
            hidden_dim=a.hidden_dim,
            bottleneck_dim=a.bottleneck_dim,
            layers=a.head_layers,
            batch_norm=a.batch_norm,
            norm_last_layer=a.norm_last_layer,
        )
        self.teacher = frozen_copy(Projected(self.backbone, self.head))
        self.loss_fn = self.build_loss(
            student_temperature=a.student_temperature, teacher_temperature=a.teacher_temperature
        )
        self.center: Tensor
        self.register_buffer("center", torch.zeros(a.out_dim))

    def trained_model(self) -> Tower:
        """The teacher's backbone, which evaluation and export read: the paper evaluates
        and releases the teacher, better than the student throughout training (section
        5.2, Figure 6)."""
        return cast(Tower, self.teacher.backbone)

    def teacher_temperature(self, step: int) -> float:
        """The teacher's temperature after ``step`` optimiser steps: linear warm-up, then flat."""
        a, final = self.args, float(self.loss_fn.teacher_temperature)  # type: ignore[arg-type]
        if step >= a.warmup_teacher_temperature_steps:
            return final
        progress = step / a.warmup_teacher_temperature_steps
        return a.warmup_teacher_temperature + (final - a.warmup_teacher_temperature) * progress

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        views: list[Tensor] = batch["views"]
        step = int(self.steps_done)
        frozen = step < self.args.freeze_last_layer_steps
        b = views[0].shape[0]
        # as DINO's multi-crop wrapper: one backbone pass per run of same-sized views, one
        # head pass over all of them (BatchNorm statistics of the whole set)
        features = [
            self.backbone(pixel_values=torch.cat(list(same_size)))
            for _, same_size in itertools.groupby(views, key=lambda v: v.shape[-2:])
        ]
        student = self.head(torch.cat(features), freeze_last_layer=frozen).split(b)
        with torch.no_grad():
            teacher = self.teacher(torch.cat(views[:2])).split(b)
        temperature = self.teacher_temperature(step)
        loss = self.loss_fn(student, teacher, self.center, teacher_temperature=temperature)
        if self.training:  # evaluation passes leave the center alone
            self.center.copy_(update_center(self.center, teacher, self.args.center_momentum))
        return {"loss": loss, "teacher_temperature": torch.tensor(temperature)}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        super().after_optimizer_step(step, total_steps)
        momentum = cosine_momentum(step, total_steps, self.args.base_momentum)
        ema_update(self.teacher, Projected(self.backbone, self.head), momentum)
