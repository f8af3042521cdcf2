"""The interface every training method implements; the loop knows nothing else.

A method builds its model and data from the config, turns a batch into a dict with a
``"loss"`` (plus scalars worth logging), and may evaluate itself and update state (EMA
targets, queues) after each optimiser step. Adding a method is one file in this package.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.utils.data import Dataset

from mmcontrast.config import Config
from mmcontrast.registry import LOSSES


class Method(nn.Module):
    """Base class for training methods (registered in ``METHODS``)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Return ``{"loss": scalar, ...}`` for one batch."""
        raise NotImplementedError

    def embed_for_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The loss's inputs for a batch: gradient caching (``train.grad_cache_micro_batch``).

        Per-sample tensors have the batch on their first dimension; 0-dim tensors (logit
        scale and bias) do not depend on the batch. ``forward(batch, embed_only=True)`` must
        return this, so that the loop can call it through the DDP wrapper.
        """
        raise NotImplementedError(f"{type(self).__name__} has no embed_for_loss()")

    def loss_from_embeddings(self, embeddings: dict[str, Tensor]) -> dict[str, Tensor]:
        """``forward``'s result from :meth:`embed_for_loss`'s outputs (concatenated)."""
        raise NotImplementedError(f"{type(self).__name__} has no loss_from_embeddings()")

    def supports_grad_cache(self) -> bool:
        """Whether the loss can come from cached embeddings (:meth:`embed_for_loss`)."""
        return type(self).embed_for_loss is not Method.embed_for_loss

    def train_data(self) -> tuple[Dataset, Callable[[list[Any]], dict[str, Any]]]:
        """The training dataset (with ``set_epoch``) and its collate function."""
        raise NotImplementedError

    def evaluate(
        self,
        output_dir: Path | None = None,
        step: int | None = None,
        extra: dict[str, Any] | None = None,
        accelerator: Any = None,
    ) -> dict[str, float]:
        """Held-out metrics; ``output_dir`` receives JSON (with ``extra``) and pictures.

        Called on every process with the training ``accelerator`` (embeddings are sharded
        and gathered; every process returns the metrics) and ``output_dir`` on the main
        process only, or outside training with neither. Default: no metrics.
        """
        return {}

    def make_loss(self, name: str, **defaults: Any) -> nn.Module:
        """Loss ``name`` with the recipe's ``loss.kwargs`` over ``defaults``.

        A loss that can gather across processes gets ``loss.gather_distributed``.
        """
        if "gather_distributed" in self.cfg.loss.kwargs:
            raise ValueError(
                "set loss.gather_distributed (a key of its own), not loss.kwargs.gather_distributed"
            )
        kwargs = {**defaults, **self.cfg.loss.kwargs}
        loss_cls = LOSSES.get(name)
        if "gather_distributed" in inspect.signature(loss_cls).parameters:
            kwargs["gather_distributed"] = self.cfg.loss.gather_distributed
        return loss_cls(**kwargs)

    def loss_is_global(self) -> bool:
        """Whether ``forward``'s loss gathers every process's samples (``loss_fn`` gathers).

        Such a loss has the whole batch's value on every process but the gradient of this
        process's share only (see :mod:`mmcontrast.distributed`): the loop multiplies it by
        the number of processes before ``backward``, since DDP averages gradients.
        """
        return bool(getattr(getattr(self, "loss_fn", None), "gather_distributed", False))

    def lr_prefixes(self) -> dict[str, float]:
        """Parameter-name prefix -> learning rate for parts with their own ``lr``."""
        rates = {}
        for name in ("vision", "text"):
            lr = getattr(self.cfg.model, name).lr
            if lr is not None:
                rates[f"model.{name}."] = lr
        return rates

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Hook for state updated outside back-propagation (EMA targets, queues)."""
