"""The one module that talks to ``torch.distributed``: rank, world size and gathers.

Losses that use negatives from every process follow one rule, which keeps values and
gradients exact:

1. gather the other processes' embeddings with :func:`gather_with_grad` (its backward sums
   the gradient that every process sends to a slice and hands each process its own slice);
2. compute this process's *share* of the global loss (its own rows, divided by the global
   count), so that the shares of all processes sum to the loss of the whole batch;
3. return :func:`sum_shares` of it: the value is the global loss on every process, the
   gradient is that of the local share.

Then ``loss.backward()`` on every process gives each input exactly the gradient it has in
one process with the whole batch. A trainer whose data-parallel wrapper *averages*
parameter gradients over P processes (DDP does) must multiply such a loss by P before
``backward`` to get the whole-batch gradient.

Without an initialised process group every function here acts as for one process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    """Wait for every process (a no-op in one process)."""
    if is_distributed():
        dist.barrier()


def gather_objects(item: Any) -> list[Any]:
    """Every process's picklable ``item``, in rank order (``[item]`` in one process)."""
    if not is_distributed():
        return [item]
    items: list[Any] = [None] * world_size()
    dist.all_gather_object(items, item)
    return items


def batch_sizes(local_size: int, device: torch.device) -> list[int]:
    """The first-dimension size of every process's tensor, in rank order."""
    if not is_distributed():
        return [local_size]
    size = torch.tensor([local_size], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _gather(tensor: Tensor, sizes: list[int]) -> Tensor:
    """All-gather along dim 0, allowing a different first-dimension size per process."""
    longest = max(sizes)
    padded = tensor.contiguous()
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([padded, pad])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums each slice's gradient over processes."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        sizes = batch_sizes(tensor.shape[0], tensor.device)
        ctx.start = sum(sizes[: rank()])
        ctx.size = tensor.shape[0]
        return _gather(tensor, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.size]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate every process's ``tensor`` (dim 0, rank order), differentiably.

    Gradients reaching another process's slice are sent back to it (summed over
    processes), so this process's slice gets the gradient of every process's loss share.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def gather(tensor: Tensor) -> Tensor:
    """Concatenate every process's ``tensor`` along dim 0 without gradient (labels, keys)."""
    if not is_distributed():
        return tensor
    return _gather(tensor, batch_sizes(tensor.shape[0], tensor.device))


@torch.no_grad()
def shuffled_forward(module: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``module(x)`` for this process's rows, computed on a random share of all processes' rows.

    MoCo's shuffling BN (He et al. 2020, section 3.3): the batches of every process are
    gathered, permuted (rank 0 draws the permutation from its generator and broadcasts it)
    and split evenly; each process runs ``module`` on its share, and the outputs return to
    the processes and rows they came from. BatchNorm inside ``module`` then normalises a
    key with other samples' statistics than its query's, which closes the shortcut. Every
    process must pass the same batch size. With one process it is ``module(x)``.
    """
    if not is_distributed():
        return module(x)
    sizes = batch_sizes(x.shape[0], x.device)
    if len(set(sizes)) != 1:
        raise ValueError(f"shuffled_forward needs equal batches on every process, got {sizes}")
    everything = _gather(x, sizes)
    total = everything.shape[0]
    if rank() == 0:
        order = torch.randperm(total).to(x.device)
    else:
        order = torch.empty(total, dtype=torch.long, device=x.device)
    dist.broadcast(order, src=0)
    size, start = sizes[0], rank() * sizes[0]
    outputs = _gather(module(everything[order[start : start + size]]), sizes)  # in `order`
    return outputs[torch.argsort(order)[start : start + size]]


def local_offset(local_size: int, device: torch.device) -> tuple[int, int]:
    """(index of this process's first row in the gathered batch, global batch size)."""
    sizes = batch_sizes(local_size, device)
    return sum(sizes[: rank()]), sum(sizes)


@torch.no_grad()
def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over processes (a new tensor; no gradient)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def all_reduce_max(tensor: Tensor) -> Tensor:
    """Element-wise maximum of ``tensor`` over processes (a new tensor; no gradient)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def sum_shares(share: Tensor) -> Tensor:
    """The sum of every process's ``share`` as the value, ``share``'s own graph as gradient."""
    if not is_distributed():
        return share
    return all_reduce_sum(share) + (share - share.detach())
