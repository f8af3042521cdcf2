"""Symmetric InfoNCE over image-text pairs (CLIP)."""

from __future__ import annotations

import contextlib
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mmcontrast import distributed
from mmcontrast.losses.checks import require_count, require_same_shape
from mmcontrast.losses.numerics import wide_mean
from mmcontrast.registry import LOSSES


@LOSSES.register("clip", "symmetric InfoNCE over image-text pairs (Radford et al. 2021)")
class ClipLoss(nn.Module):
    """Symmetric cross-entropy over the image-text similarity matrix.

    With L2-normalised features ``I`` [N, D], ``T`` [N, D] and multiplier ``s``::

        logits = s * I @ T.T
        loss = (CE(logits, arange(N)) + CE(logits.T, arange(N))) / 2

    Pair ``i`` is the positive of row ``i``; the other N-1 entries of the row are negatives.

    With ``labels`` [N] (FLYP's class prompts: two images of one class in a batch have
    captions of the same class), entries ``(i, j)``, ``j != i``, whose labels are equal are
    masked out of both softmaxes: a duplicate of the positive is neither a positive nor a
    negative. Unique labels give the plain loss.

    Reference:
        Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
        Supervision", https://arxiv.org/abs/2103.00020 (pseudocode in Figure 3).

    Args:
        gather_distributed: use every process's pairs as negatives. The value on each
            process is then the loss of the whole batch, and each feature's gradient is
            the one it has in a single process with the whole batch. ``logit_scale``,
            replicated on every process, gets this process's share of its gradient: the
            shares sum to the whole-batch gradient (as a gradient all-reduce sums them);
            see :mod:`mmcontrast.distributed`.
        local_loss: with ``gather_distributed``, compute only this process's rows and
            columns of the global matrix ([B, N] instead of [N, N]; open_clip's
            ``local_loss``). Same value and feature gradients, less compute.
        chunk_size: if set, go through the columns ``chunk_size`` at a time: the forward
            pass keeps only the row and column log-sum-exps, the backward pass recomputes
            each block of logits, so no more than [N, chunk_size] logits (and a few
            matrices of that size) are ever held instead of several [N, N] ones. Same
            value and gradients (to rounding), for about 4/3 of the matrix products.

    Shapes:
        image_features: [N, D], L2-normalised.
        text_features: [N, D], L2-normalised.
        logit_scale: scalar tensor, the multiplier ``s`` (already exponentiated).

    Raises:
        ValueError: if ``chunk_size`` is not a positive integer or the two feature tensors
            differ in shape.

    Example:
        >>> loss_fn = ClipLoss()
        >>> img = F.normalize(torch.randn(8, 32), dim=-1)
        >>> txt = F.normalize(torch.randn(8, 32), dim=-1)
        >>> loss = loss_fn(img, txt, torch.tensor(100.0))
        >>> chunked = ClipLoss(chunk_size=3)(img, txt, torch.tensor(100.0))
        >>> bool(torch.allclose(loss, chunked, atol=1e-5))
        True
    """

    # A dual encoder trained with this loss starts from these (log scale, bias).
    init_logit_scale: ClassVar[float] = math.log(1 / 0.07)
    init_logit_bias: ClassVar[float | None] = None
    title: ClassVar[str] = "symmetric InfoNCE (CLIP)"  # how model cards name the loss

    def __init__(
        self,
        gather_distributed: bool = False,
        local_loss: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if chunk_size is not None:
            require_count("chunk_size", chunk_size)
        self.gather_distributed = gather_distributed
        self.local_loss = local_loss
        self.chunk_size = chunk_size

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        labels: Tensor | None = None,
    ) -> Tensor:
        require_same_shape(image_features=image_features, text_features=text_features)
        gathered = self.gather_distributed and distributed.is_distributed()
        if self.chunk_size is not None:
            if labels is not None:
                raise ValueError("ClipLoss: labels (masked duplicates) need chunk_size=None")
            return self._chunked(
                image_features, text_features, logit_scale, gathered, self.chunk_size
            )
        if not gathered:
            logits = logit_scale * image_features @ text_features.T
            return _symmetric_ce(_mask_duplicates(logits, labels, labels, 0))
        all_images = distributed.gather_with_grad(image_features)
        all_texts = distributed.gather_with_grad(text_features)
        all_labels = distributed.gather(labels) if labels is not None else None
        if not self.local_loss:
            logits = _mask_duplicates(
                logit_scale * all_images @ all_texts.T, all_labels, all_labels, 0
            )
            return distributed.sum_shares(_symmetric_ce(logits) / distributed.world_size())
        offset, total = distributed.local_offset(image_features.shape[0], image_features.device)
        targets = torch.arange(
            offset, offset + image_features.shape[0], device=image_features.device
        )
        image_logits = logit_scale * image_features @ all_texts.T
        text_logits = logit_scale * text_features @ all_images.T
        per_image = F.cross_entropy(
            _mask_duplicates(image_logits, labels, all_labels, offset), targets, reduction="none"
        )
        per_text = F.cross_entropy(
            _mask_duplicates(text_logits, labels, all_labels, offset), targets, reduction="none"
        )
        return distributed.sum_shares(wide_mean(torch.cat([per_image, per_text]), 2 * total))

    def _chunked(
        self, images: Tensor, texts: Tensor, logit_scale: Tensor, gathered: bool, chunk: int
    ) -> Tensor:
        """The same loss, term by term, through :class:`_BlockwiseCrossEntropy`."""
        logit_scale = torch.as_tensor(logit_scale, device=images.device)
        dtype = _loss_dtype(images, logit_scale)
        if not gathered:
            terms = _BlockwiseCrossEntropy.apply(images, texts, logit_scale, 0, chunk, True)
            return (terms / (2 * images.shape[0])).to(dtype)
        all_images = distributed.gather_with_grad(images)
        all_texts = distributed.gather_with_grad(texts)
        if not self.local_loss:
            terms = _BlockwiseCrossEntropy.apply(all_images, all_texts, logit_scale, 0, chunk, True)
            share = terms / (2 * all_images.shape[0]) / distributed.world_size()
            return distributed.sum_shares(share.to(dtype))
        offset, total = distributed.local_offset(images.shape[0], images.device)
        per_image = _BlockwiseCrossEntropy.apply(
            images, all_texts, logit_scale, offset, chunk, False
        )
        per_text = _BlockwiseCrossEntropy.apply(
            texts, all_images, logit_scale, offset, chunk, False
        )
        return distributed.sum_shares(((per_image + per_text) / max(2 * total, 1)).to(dtype))


def _mask_duplicates(
    logits: Tensor, row_labels: Tensor | None, col_labels: Tensor | None, offset: int
) -> Tensor:
    """``logits`` [B, M] with entries of equal labels other than the positive (row ``i``,
    column ``i + offset``) set to -inf; unchanged without labels."""
    if row_labels is None or col_labels is None:
        return logits
    duplicates = row_labels[:, None] == col_labels[None, :]
    rows = torch.arange(logits.shape[0], device=logits.device)
    duplicates[rows, rows + offset] = False
    return logits.masked_fill(duplicates, float("-inf"))


def _symmetric_ce(logits: Tensor) -> Tensor:
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _loss_dtype(features: Tensor, logit_scale: Tensor) -> torch.dtype:
    """The dtype the unchunked loss returns: its logits', or at least float32 under autocast."""
    logits = torch.result_type(logit_scale, features)
    if _autocast_state(features.device.type)[0]:
        return torch.promote_types(logits, torch.float32)
    return logits


class _BlockwiseCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``L = (s * Q) @ K.T`` [B, M], ``chunk`` columns at a time.

    Row ``i``'s positive is column ``i + offset``; the value is ``sum_i (r_i - L[i, i+o])``
    with row log-sum-exps ``r``, plus ``sum_j (c_j - L[j, j])`` with column log-sum-exps
    ``c`` when ``symmetric`` (a square matrix, offset 0). Summed in at least float32.

    Forward keeps ``Q``, ``K``, ``s``, ``r`` (and ``c``). Backward recomputes each block of
    logits; with upstream gradient ``g`` the gradient of the value with respect to them is
    ``G = g * (exp(L - r[:, None]) [+ exp(L - c[None, :])] - k * onehot(positives))``
    (``k`` = 2 if symmetric, else 1), and since ``L_ij = s <Q_i, K_j>``::

        dQ = s * G @ K        dK = G.T @ (s * Q)        ds = sum_i <Q_i, (G @ K)_i>

    The blocks are recomputed under the autocast state of the forward pass, so the
    softmaxes are those of the logits the log-sum-exps came from.
    """

    @staticmethod
    def forward(
        ctx: Any,
        queries: Tensor,
        keys: Tensor,
        logit_scale: Tensor,
        offset: int,
        chunk: int,
        symmetric: bool,
    ) -> Tensor:
        device = queries.device.type
        ctx.autocast = (device, *_autocast_state(device))
        ctx.offset, ctx.chunk, ctx.symmetric = offset, chunk, symmetric
        scaled = logit_scale * queries
        rows, cols = queries.shape[0], keys.shape[0]
        wide = torch.promote_types(scaled.dtype, torch.float32)
        row_lse = torch.full((rows,), float("-inf"), dtype=wide, device=queries.device)
        col_lse = torch.empty((cols if symmetric else 0,), dtype=wide, device=queries.device)
        positive = torch.zeros((rows,), dtype=wide, device=queries.device)
        for start in range(0, cols, chunk):
            block = (scaled @ keys[start : start + chunk].T).to(wide)
            row_lse = torch.logaddexp(row_lse, torch.logsumexp(block, dim=1))
            if symmetric:
                col_lse[start : start + chunk] = torch.logsumexp(block, dim=0)
            i, j = _positives(rows, start, block.shape[1], offset, block.device)
            positive[i] = block[i, j].to(positive.dtype)
        terms = (row_lse - positive).sum()
        if symmetric:
            terms = terms + (col_lse - positive).sum()
        ctx.save_for_backward(queries, keys, logit_scale, row_lse, col_lse)
        return terms

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        queries, keys, logit_scale, row_lse, col_lse = ctx.saved_tensors
        device, enabled, dtype = ctx.autocast
        rows, cols = queries.shape[0], keys.shape[0]
        autocast = torch.autocast(device, dtype=dtype) if enabled else contextlib.nullcontext()
        with autocast:
            scaled = logit_scale * queries
            d_scaled = torch.zeros(queries.shape, dtype=row_lse.dtype, device=queries.device)
            d_keys = torch.zeros(keys.shape, dtype=row_lse.dtype, device=keys.device)
            for start in range(0, cols, ctx.chunk):
                stop = min(start + ctx.chunk, cols)
                logits = scaled @ keys[start:stop].T
                block = logits.to(row_lse.dtype)
                g_block = torch.exp(block - row_lse[:, None])
                if ctx.symmetric:
                    g_block = g_block + torch.exp(block - col_lse[None, start:stop])
                i, j = _positives(rows, start, stop - start, ctx.offset, block.device)
                g_block[i, j] -= 2.0 if ctx.symmetric else 1.0
                g_block = g_block.to(logits.dtype)
                d_scaled += g_block @ keys[start:stop]
                d_keys[start:stop] = g_block.T @ scaled
        grad = grad.to(d_scaled.dtype)
        d_queries = d_keys_out = d_scale = None
        if ctx.needs_input_grad[0]:
            d_queries = (grad * logit_scale * d_scaled).to(queries.dtype)
        if ctx.needs_input_grad[1]:
            d_keys_out = (grad * d_keys).to(keys.dtype)
        if ctx.needs_input_grad[2]:
            d_scale = (grad * (d_scaled * queries).sum()).to(logit_scale.dtype)
            d_scale = d_scale.reshape(logit_scale.shape)
        return d_queries, d_keys_out, d_scale, None, None, None


def _autocast_state(device: str) -> tuple[bool, torch.dtype]:
    """Whether autocast is on for ``device``, and its dtype."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
    if device == "cpu":
        return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


def _positives(
    rows: int, start: int, width: int, offset: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(row, column-in-block) of the positives in the block of columns [start, start + width)."""
    first = max(start - offset, 0)
    row = torch.arange(first, max(first, min(start + width - offset, rows)), device=device)
    return row, row + offset - start
