"""Gradient caching: a large contrastive batch's exact gradient at a micro-batch's memory.

A contrastive loss couples every sample of the batch, so plain gradient accumulation (one
loss per micro-batch) loses the other micro-batches' negatives. Gradient caching keeps them,
in three passes over one per-process batch split into micro-batches:

1. **embed**: run the model on each micro-batch without a graph, keeping only its outputs
   (embeddings, logit scale and bias) and the RNG state it started from (CPU and CUDA
   generators);
2. **loss**: compute the loss over the whole batch from the outputs, detached into leaves
   that require grad, and back-propagate it (``accelerator.backward``: gradient
   accumulation's 1/N and fp16 loss scaling included) to get the gradient of the loss with
   respect to every embedding and to the logit scale and bias;
3. **replay**: run each micro-batch again with grad, its RNG state restored so dropout
   draws the same masks, and back-propagate the cached gradients through it: its slice of
   the embedding gradients, and the logit scale and bias gradients with the last one.

The parameters then get the gradient of one graph over the whole batch (with dropout
drawn micro-batch by micro-batch); the logged loss is the whole batch's. Memory: one
micro-batch's activations, the batch's inputs (which the loader holds anyway), its
embeddings, and what the loss itself needs (the [N, N] logits, unless the CLIP or
SigLIP loss's ``chunk_size`` bounds them).

With several processes the loss gathers the embeddings of all of them
(``loss.gather_distributed``), so its gradient with respect to this process's embeddings is
the whole P*B batch's, and the loop's factor P before ``backward`` carries over; under DDP
only the last micro-batch's replay synchronises gradients (the others run under
``no_sync``), and every process runs the same number of micro-batches (``chunks``, fixed
by the config), so DDP's collectives pair up even when a batch lost unreadable samples
(as long as it keeps at least ``chunks`` rows).

BatchNorm layers see micro-batch statistics (as in any micro-batching); their running
statistics are updated by the replay only.

Reference:
    Gao, Zhang, Han, Callan 2021, "Scaling Deep Contrastive Learning Batch Size under
    Memory Limited Setup", https://arxiv.org/abs/2101.06983.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor, nn

from mmcontrast.config import ConfigError, TrainConfig
from mmcontrast.methods.base import Method

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def micro_batches_per_batch(train: TrainConfig) -> int | None:
    """How many micro-batches ``train.grad_cache_micro_batch`` makes of a batch (None: off).

    Raises:
        ConfigError: if the micro-batch is not positive, larger than ``train.batch_size``
            or does not divide it.
    """
    micro, batch = train.grad_cache_micro_batch, train.batch_size
    if micro is None:
        return None
    if micro < 1:
        raise ConfigError(
            f"train.grad_cache_micro_batch must be a positive number of samples, got {micro} "
            "(leave it unset to turn gradient caching off)"
        )
    if micro > batch:
        raise ConfigError(
            f"train.grad_cache_micro_batch={micro} is larger than train.batch_size={batch}, "
            f"the per-process batch it splits: set it to at most {batch}, or raise train.batch_size"
        )
    if batch % micro:
        divisors = [d for d in range(1, batch + 1) if batch % d == 0]
        nearest = sorted(divisors, key=lambda d: abs(d - micro))[:2]
        raise ConfigError(
            f"train.grad_cache_micro_batch={micro} does not divide train.batch_size={batch}: "
            f"pick a divisor of {batch} (e.g. {' or '.join(map(str, sorted(nearest)))})"
        )
    return batch // micro


def check_grad_cache_support(method: Method, accelerator: Accelerator) -> None:
    """Refuse gradient caching for a method or a distributed setup that cannot do it."""
    if not method.supports_grad_cache():
        raise ConfigError(
            f"train.grad_cache_micro_batch needs a method that computes its loss from cached "
            f"embeddings (method 'clip', losses clip and siglip); method "
            f"{method.cfg.method!r} does not (unset train.grad_cache_micro_batch, or use "
            "train.gradient_accumulation_steps, whose negatives are those of one micro-batch)"
        )
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise ConfigError(
            f"train.grad_cache_micro_batch is not supported under {accelerator.distributed_type}: "
            "run with DDP (plain `accelerate launch` or torchrun) or unset it"
        )


@dataclass(frozen=True)
class RngState:
    """The generators dropout draws from: the CPU one and, on a GPU, that device's."""

    cpu: Tensor
    cuda: tuple[torch.device, Tensor] | None = None

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        if device.type == "cuda":
            return cls(torch.get_rng_state(), (device, torch.cuda.get_rng_state(device)))
        return cls(torch.get_rng_state())

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            device, state = self.cuda
            torch.cuda.set_rng_state(state, device)


def split_batch(batch: Mapping[str, Any], chunks: int) -> list[dict[str, Any]]:
    """``batch`` cut into ``chunks`` micro-batches along the first dimension (views).

    Sizes differ by at most one; a batch with fewer rows than ``chunks`` gives fewer.

    Raises:
        ValueError: if the values of ``batch`` do not all have the same number of rows.
    """
    rows = {key: len(value) for key, value in batch.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(
            f"gradient caching splits every batch value along its first dimension, "
            f"but they have different lengths: {rows}"
        )
    total = next(iter(rows.values()))
    sizes = [total // chunks + (i < total % chunks) for i in range(chunks)]
    micro_batches, start = [], 0
    for size in sizes:
        if size:
            micro_batches.append({k: v[start : start + size] for k, v in batch.items()})
        start += size
    return micro_batches


def grad_cache_backward(
    accelerator: Accelerator,
    model: nn.Module,
    batch: Mapping[str, Any],
    chunks: int,
    loss_factor: float = 1.0,
) -> dict[str, Tensor]:
    """Back-propagate the whole batch's loss micro-batch by micro-batch; return the outputs.

    Args:
        accelerator: the loop's accelerator (autocast, ``backward``, ``no_sync``).
        model: the prepared method (DDP-wrapped with several processes); ``model(batch,
            embed_only=True)`` gives the loss inputs and the unwrapped method's
            ``loss_from_embeddings`` the loss.
        batch: one per-process batch of model inputs.
        chunks: the number of micro-batches (:func:`micro_batches_per_batch`).
        loss_factor: the loss is multiplied by it before ``backward`` (the loop's P).

    Returns:
        ``loss_from_embeddings``'s dict, detached: ``"loss"`` is the whole batch's.
    """
    method: Method = accelerator.unwrap_model(model)
    micro_batches = split_batch(batch, chunks)
    device = _device(batch)

    states, parts = [], []
    norm_stats = _running_stats(model)
    with torch.no_grad():
        for micro in micro_batches:
            states.append(RngState.capture(device))
            parts.append(model(micro, embed_only=True))
    for buffer, saved in norm_stats:  # the replay updates them, once per micro-batch
        buffer.copy_(saved)
    after_embedding = RngState.capture(device)

    leaves = _leaves(parts)
    del parts  # the concatenated leaves replace the per-micro-batch embeddings
    with accelerator.autocast():
        out = method.loss_from_embeddings(leaves)
    accelerator.backward(out["loss"] * loss_factor)

    start = 0
    for index, (micro, state) in enumerate(zip(micro_batches, states, strict=True)):
        last = index == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            state.restore()
            replayed = model(micro, embed_only=True)
            outputs, grads = _cotangents(replayed, leaves, start, last)
            if outputs:
                torch.autograd.backward(outputs, grads)
        start += _rows(micro)
    after_embedding.restore()
    return {key: value.detach() for key, value in out.items()}


def _leaves(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Per-sample outputs concatenated, shared (0-dim: logit scale, bias) taken once; leaves."""
    leaves = {}
    for key, first in parts[0].items():
        value = first if first.ndim == 0 else torch.cat([part[key] for part in parts])
        leaves[key] = value.detach().requires_grad_(value.is_floating_point())
    return leaves


def _cotangents(
    replayed: dict[str, Tensor], leaves: dict[str, Tensor], start: int, last: bool
) -> tuple[list[Tensor], list[Tensor]]:
    """The replayed outputs that need a gradient and their slices of the cached gradients."""
    outputs, grads = [], []
    for key, value in replayed.items():
        grad = leaves[key].grad
        if grad is None or not value.requires_grad:
            continue
        if value.ndim == 0:  # shared by the micro-batches: its gradient goes in once
            if not last:
                continue
        else:
            grad = grad[start : start + value.shape[0]]
        outputs.append(value)
        grads.append(grad.to(value.dtype))
    return outputs, grads


def _running_stats(model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """(buffer, copy) for the running statistics the embedding pass would update."""
    saved = []
    for module in model.modules():
        if isinstance(module, NORMS) and module.training and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buffer is not None:
                    saved.append((buffer, buffer.clone()))
    return saved


def _rows(batch: Mapping[str, Any]) -> int:
    return len(next(iter(batch.values())))


def _device(batch: Mapping[str, Any]) -> torch.device:
    for value in batch.values():
        if isinstance(value, Tensor):
            return value.device
    return torch.device("cpu")
