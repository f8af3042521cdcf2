"""An exponential moving average (EMA) of the trained weights: ``train.ema_decay``.

Averaging the iterates of SGD (Polyak & Juditsky 1992, "Acceleration of Stochastic
Approximation by Averaging") with an exponential window gives weights that generalise at
least as well as the last ones and are less noisy; fine-tuning recipes keep such an EMA and
evaluate and ship it (timm's ``--model-ema``; Wortsman et al. 2022, "Robust fine-tuning of
zero-shot models", average weights for the same reason).

The average covers every floating-point parameter and buffer of the method's
``trained_model()`` (what evaluation and export read; integer buffers are copied), kept in
float32 on the training device, and is updated after each optimiser step by timm's
``ModelEmaV3`` with its warm-up: after step ``t`` (from 1)

    ema = d_t * ema + (1 - d_t) * weights,   d_t = min(ema_decay, 1 - t ** (-2/3))

so ``d_1 = 0`` (the EMA starts at the weights after the first step) and the window grows
with training until it reaches ``1 / (1 - ema_decay)`` steps (d_t is 0.99 at step 1,000 and
0.999 at step 31,623): a short run is not dominated by its starting weights.

Each process keeps its own EMA of the same weights (DDP keeps them identical), so the EMAs
agree without communication. Checkpoints hold it as ``ema.safetensors`` (see
:mod:`mmcontrast.train.checkpoint`) and resuming continues it exactly; since ``d_t`` depends
on the step only, the EMA has no other state.

    >>> import torch
    >>> layer = torch.nn.Linear(2, 1)
    >>> ema = WeightsEma(layer, decay=0.9)
    >>> with torch.no_grad():
    ...     _ = layer.weight.fill_(1.0)
    >>> ema.update(step=1)  # d_1 = 0: the EMA takes the weights
    >>> ema.module.weight.tolist()
    [[1.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from timm.utils import ModelEmaV3
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from mmcontrast.methods.trained import EMA_FILE  # in each checkpoint folder


class WeightsEma:
    """The EMA of ``model``'s weights, updated in place from the live ``model``.

    Args:
        model: The module trained (``Method.trained_model()``), already on its device.
        decay: ``train.ema_decay``, in (0, 1).

    Raises:
        ValueError: ``decay`` outside (0, 1), weights sharded by FSDP, or floating-point
            weights that are not float32.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay = {decay} must be in (0, 1), e.g. 0.999")
        if any(isinstance(p, DTensor) for p in model.parameters()):
            raise ValueError(
                "train.ema_decay: the weights are sharded (FSDP), and the EMA needs them whole "
                "on every process; train with DDP, or set train.ema_decay=null"
            )
        odd = {str(v.dtype) for v in model.state_dict().values() if _averaged(v)} - {
            "torch.float32"
        }
        if odd:
            raise ValueError(
                f"train.ema_decay: the EMA is kept in float32, but the weights hold {sorted(odd)}; "
                "keep the model in float32 (train.mixed_precision casts only the computation)"
            )
        self.model = model
        self.decay = decay
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True)
        self.ema.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged copy of the model (same structure and keys)."""
        return self.ema.module

    def update(self, step: int) -> None:
        """Fold the model's weights after optimiser step ``step`` (from 1) into the EMA."""
        self.ema.update(self.model, step=step)

    def save(self, folder: str | Path) -> Path:
        """Write the EMA to ``folder/ema.safetensors`` (call on one process)."""
        path = Path(folder) / EMA_FILE
        save_model(self.module, str(path))  # shared (tied) tensors once, restored on load
        return path

    def load(self, folder: str | Path) -> None:
        """Read the EMA saved by :meth:`save` in checkpoint ``folder``.

        Raises:
            FileNotFoundError: The checkpoint was written without ``train.ema_decay``.
        """
        path = Path(folder) / EMA_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} holds no {EMA_FILE}: it was written without train.ema_decay. "
                "Resume it with train.ema_decay=null, or start a fresh run"
            )
        device = next(iter(self.module.state_dict().values()), torch.empty(0)).device
        load_model(self.module, str(path), strict=True, device=str(device))

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Put the EMA into the model in place of its own weights (the end of training)."""
        for live, averaged in self._pairs():
            live.copy_(averaged)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the EMA inside the block and its own weights again after it,
        bit for bit (evaluation during training)."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        for live, averaged in self._pairs():
            held = live.clone()  # one tensor at a time: no second copy of the model
            live.copy_(averaged)
            averaged.copy_(held)

    def _pairs(self) -> list[tuple[Tensor, Tensor]]:
        live = self.model.state_dict(keep_vars=True).values()
        averaged = self.module.state_dict(keep_vars=True).values()
        return [(a.data, b.data) for a, b in zip(live, averaged, strict=True) if _averaged(a)]


def _averaged(value: Tensor) -> bool:
    return value.is_floating_point()
