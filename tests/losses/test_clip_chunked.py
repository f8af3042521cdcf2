"""``ClipLoss(chunk_size=...)``: the same loss and gradients as the whole [N, N] matrix.

The 2-process (gather, local loss, empty rank) variants are in ``test_distributed_losses.py``.
"""

from __future__ import annotations

from typing import Any

import open_clip.loss as oc_loss
import pytest
import reference as ref
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from mmcontrast.losses import ClipLoss
from mmcontrast.losses.clip import _BlockwiseCrossEntropy

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def inputs(n: int, d: int, scale: float, dtype: torch.dtype, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    scale_t = torch.tensor(scale, dtype=torch.float64)
    return [t.to(dtype).requires_grad_(True) for t in (img, txt, scale_t)]


def value_and_grads(loss: torch.nn.Module, args: list[Tensor]) -> list[Tensor]:
    value = loss(*args)
    return [value.detach(), *torch.autograd.grad(value, args)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    ("n", "chunk", "scale"),
    [(17, 5, 100.0), (10, 3, 14.3), (33, 1, 50.0), (8, 8, 7.0), (8, 100, 20.0), (1, 1, 10.0)],
    ids=["17-by-5", "10-by-3", "chunk-1", "chunk-n", "chunk-over-n", "n-1"],
)
def test_chunked_equals_unchunked(n: int, chunk: int, scale: float, dtype: torch.dtype) -> None:
    args = inputs(n, 16, scale, dtype, seed=n)
    whole = value_and_grads(ClipLoss(), args)
    chunked = value_and_grads(ClipLoss(chunk_size=chunk), args)
    tol = TOLERANCE[dtype]
    for got, expected in zip(chunked, whole, strict=True):
        assert got.dtype == expected.dtype
        atol = tol * max(1.0, expected.abs().max().item())  # gradients grow with the scale
        torch.testing.assert_close(got, expected, atol=atol, rtol=tol)


@pytest.mark.parametrize(("n", "chunk"), [(9, 4), (16, 5)])
def test_chunked_equals_reference_and_open_clip(n: int, chunk: int) -> None:
    args = inputs(n, 12, 30.0, torch.float64, seed=3)
    chunked = value_and_grads(ClipLoss(chunk_size=chunk), args)
    reference = value_and_grads(ref.clip_reference, args)
    open_clip = value_and_grads(oc_loss.ClipLoss(), args)
    for got, paper, theirs in zip(chunked, reference, open_clip, strict=True):
        torch.testing.assert_close(got, paper, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(got, theirs, atol=1e-10, rtol=1e-10)


def test_chunked_gradcheck() -> None:
    args = inputs(5, 4, 3.0, torch.float64, seed=1)
    assert torch.autograd.gradcheck(lambda *a: ClipLoss(chunk_size=2)(*a), args)


@pytest.mark.parametrize(("rows", "cols", "offset"), [(3, 8, 0), (3, 8, 2), (3, 8, 5), (0, 4, 4)])
def test_one_direction_blocks_match_cross_entropy(rows: int, cols: int, offset: int) -> None:
    """The local-loss building block: rows of an [B, M] strip, row i's positive at i + offset."""
    queries, _, scale = inputs(rows, 4, 6.0, torch.float64, seed=2)
    keys = inputs(cols, 4, 1.0, torch.float64, seed=4)[0]
    labels = torch.arange(offset, offset + rows)
    expected = F.cross_entropy(scale * queries @ keys.T, labels, reduction="sum")
    got = _BlockwiseCrossEntropy.apply(queries, keys, scale, offset, 3, False)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(
        lambda q, k, s: _BlockwiseCrossEntropy.apply(q, k, s, offset, 3, False),
        [queries, keys, scale],
    )


def test_local_loss_without_processes_is_the_whole_loss() -> None:
    args = inputs(7, 8, 20.0, torch.float64)
    whole = value_and_grads(ClipLoss(), args)
    chunked = value_and_grads(
        ClipLoss(gather_distributed=True, local_loss=True, chunk_size=3), args
    )
    for got, expected in zip(chunked, whole, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_bf16_autocast_matches_unchunked() -> None:
    args = inputs(64, 32, 30.0, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whole, chunked = ClipLoss()(*args), ClipLoss(chunk_size=10)(*args)
    assert chunked.dtype == whole.dtype == torch.float32
    torch.testing.assert_close(chunked, whole, atol=1e-3, rtol=1e-3)
    for got, expected in zip(
        torch.autograd.grad(chunked, args), torch.autograd.grad(whole, args), strict=True
    ):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=2e-2 * expected.abs().max().item(), rtol=0)


def test_bf16_inputs_stay_bf16_and_close_to_float32() -> None:
    args = inputs(32, 16, 20.0, torch.bfloat16)
    exact = ClipLoss()(*(a.detach().float() for a in args))
    loss = ClipLoss(chunk_size=5)(*args)
    loss.backward()
    assert loss.dtype == torch.bfloat16 and all(a.grad.dtype == torch.bfloat16 for a in args)
    assert abs(loss.item() - exact.item()) <= 2**-7 * exact.item()  # one bf16 rounding


class _LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op returns (every allocation goes through)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("local", [False, True])
def test_chunked_never_builds_an_n_by_n_tensor(local: bool) -> None:
    """Forward and backward: every tensor has at most [N, chunk] (or [N, D]) elements."""
    n, d, chunk = 64, 16, 8
    args = inputs(n, d, 20.0, torch.float32)
    for loss, bound in [(ClipLoss(), n * n), (ClipLoss(local_loss=local, chunk_size=chunk), None)]:
        with _LargestTensor() as probe:
            torch.autograd.grad(loss(*args), args)
        if bound is not None:  # the probe sees the unchunked loss's [N, N] logits
            assert probe.largest >= bound
        else:
            assert probe.largest <= n * max(chunk, d)


@pytest.mark.parametrize("chunk", [0, -1, 2.5, True])
def test_bad_chunk_size_is_a_value_error(chunk: Any) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        ClipLoss(chunk_size=chunk)
