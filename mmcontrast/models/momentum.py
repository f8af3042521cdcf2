"""Momentum (EMA) target networks: a frozen copy, its update and the cosine schedule.

References:
    He et al. 2020 (MoCo), eq. 2: ``theta_k <- m * theta_k + (1 - m) * theta_q``.
    Grill et al. 2020 (BYOL), section 3.2: ``tau = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters never receive gradients (the EMA target)."""
    target = copy.deepcopy(module)
    for param in target.parameters():
        param.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online``, parameter by parameter."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's schedule: ``base`` at step 0, rising along a cosine to ``final`` at the end."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
