"""The interface every training method implements; the loop, evaluation and export know
nothing else.

A method builds its model and data from its config, turns a batch into a dict with a
``"loss"`` (plus scalars worth logging) and may update state (EMA targets, queues) after each
optimiser step. It declares what the layers above it read:

* :meth:`Method.trained_model`: what it trains for others to use (export, evaluation): a
  :class:`~mmcontrast.models.DualEncoder` or a vision backbone (a ``Tower``);
* :meth:`Method.eval_tasks`: the evaluation tasks run on the held-out split;
* :meth:`Method.knn_bank`: for a ``knn`` task, labelled training features the method
  already holds (a memory bank) and the encoder that maps queries into their space;
* :meth:`Method.zero_shot_classes`: for a ``zeroshot`` task, the classes, their prompt names
  and templates the method trained with (FLYP), so evaluation prompts as training did;
* :meth:`Method.loss_is_global`: whether its loss gathers every process's samples, which sets
  the loop's gradient factor; known from the losses built with :meth:`Method.make_loss`;
* :meth:`Method.teacher_request`: a teacher's embeddings of the training split that the
  training pipeline computes (once, cached) before the run starts (distillation).

Adding a method is one file in this package that registers its class in ``METHODS``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from torch import Tensor, nn
from torch.utils.data import Dataset

from mmcontrast.config import Config
from mmcontrast.data.teacher_cache import TeacherRequest
from mmcontrast.models.dual_encoder import DualEncoder
from mmcontrast.models.memory_bank import KnnBank
from mmcontrast.models.tower import Tower
from mmcontrast.registry import LOSSES, METHODS


@dataclass(frozen=True)
class ZeroShotClasses:
    """Classes for zero-shot evaluation: label values (class order), names, templates."""

    labels: list[str]
    names: list[str]
    templates: list[str]


class Method(nn.Module):
    """Base class for training methods (registered in ``METHODS``)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        # the method's own copy: it may fill in defaults (saved with the run), never the caller's
        self.cfg = copy.deepcopy(cfg)
        self.cfg.method = METHODS.canonical(cfg.method)  # saved as registered, not as an alias
        self._loss_gathers: list[bool] = []  # one per loss built by make_loss

    # ----------------------------------------------------------------- the contract

    def trained_model(self) -> DualEncoder | Tower:
        """What this method trains for others to use: a ``DualEncoder`` (image-text) or a
        vision ``Tower`` (the backbone). Export and evaluation read only this."""
        raise NotImplementedError(
            f"method {type(self).__name__} does not declare trained_model(): return the module "
            "export and evaluation use (a DualEncoder or a vision Tower)"
        )

    def eval_tasks(self) -> tuple[str, ...]:
        """Evaluation tasks (``mmcontrast list tasks``) run on the held-out split during and
        after training. Default: none."""
        return ()

    def knn_bank(self) -> KnnBank | None:
        """Labelled features of the training split that the method kept while it trained
        (a memory bank), for the ``knn`` task: queries go through ``KnnBank.encoder`` and are
        scored against ``KnnBank.features``, and the training split is not embedded again.
        Default: None (the task embeds the training split with ``trained_model()``)."""
        return None

    def zero_shot_classes(self) -> ZeroShotClasses | None:
        """The classes a ``zeroshot`` evaluation task scores, named and prompted as the method
        trained (None: the data's labels, prompted with the default templates)."""
        return None

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
        self._loss_gathers.append(bool(kwargs.get("gather_distributed", False)))
        return loss_cls(**kwargs)

    def loss_is_global(self) -> bool:
        """Whether ``forward``'s loss gathers every process's samples.

        Such a loss has the whole batch's value on every process but the gradient of this
        process's share only (see :mod:`mmcontrast.distributed`): the loop multiplies it by
        the number of processes before ``backward``, since DDP averages gradients. Known from
        the losses built with :meth:`make_loss`; a method that builds its loss otherwise
        overrides this.

        Raises:
            NotImplementedError: The method built no loss with :meth:`make_loss`.
        """
        if not self._loss_gathers:
            raise NotImplementedError(
                f"method {type(self).__name__} built no loss with make_loss(): build it there, "
                "or override loss_is_global() to say whether its loss gathers across processes"
            )
        return any(self._loss_gathers)

    def lr_prefixes(self) -> dict[str, float]:
        """Parameter-name prefix -> learning rate for parts with their own ``lr``."""
        rates = {}
        for name in ("vision", "text"):
            lr = getattr(self.cfg.model, name).lr
            if lr is not None:
                rates[f"model.{name}."] = lr
        return rates

    def fixed_lr_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes whose learning rate stays at its base value while the
        schedule warms up and decays the rest (SimSiam's predictor). Default: none."""
        return ()

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Hook for state updated outside back-propagation (EMA targets, queues)."""

    @classmethod
    def teacher_request(cls, cfg: Config) -> TeacherRequest | None:
        """A teacher's embeddings of the training split the run needs before it trains
        (distillation); computed once and cached by the training pipeline. Default: none."""
        return None


def build_method(cfg: Config) -> Method:
    """Instantiate the recipe's method (``cfg.method``, a name in ``METHODS``)."""
    return cast(Method, METHODS.get(cfg.method)(cfg))
