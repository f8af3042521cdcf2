"""Weighted k-nearest-neighbour classification on frozen features.

Each query votes with its k most cosine-similar bank samples, a neighbour with
similarity s weighing ``exp(s / temperature)``; the class scores are the summed
weights per class. This is the non-parametric classifier of Wu et al. 2018,
"Unsupervised Feature Learning via Non-Parametric Instance Discrimination", as
used by DINO's ``eval_knn.py`` (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers"): k = 20 and 200, temperature 0.07, the
training set as the bank and the validation set as queries.

Queries are processed in chunks, so at most ``rows x Nbank`` similarities exist
at once, and only the top-k neighbours of each query are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcontrast.eval.classification import (
    _check_labels,
    metrics_from_ranks,
    resolve_num_classes,
    true_class_ranks,
)

__all__ = ["knn_metrics", "knn_scores"]


def _normalize(x: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    return F.normalize(x.detach().to(device=device, dtype=dtype), dim=-1)


def _prepare(
    bank_features: Tensor,
    bank_labels: Tensor,
    query_features: Tensor,
    num_classes: int | None,
    temperature: float,
    chunk_size: int,
    max_matrix_elements: int,
    extra_labels: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """Validates inputs; returns normalised bank and queries, labels, C and rows per chunk."""
    if bank_features.ndim != 2 or query_features.ndim != 2:
        raise ValueError(
            "bank_features and query_features must be 2-D [N, D], got shapes "
            f"{tuple(bank_features.shape)} and {tuple(query_features.shape)}"
        )
    if bank_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            f"feature dims differ: bank {bank_features.shape[1]}, queries {query_features.shape[1]}"
        )
    n_bank = bank_features.shape[0]
    if n_bank == 0 or query_features.shape[0] == 0:
        raise ValueError("need at least one bank sample and one query")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1 or max_matrix_elements < 1:
        raise ValueError(
            f"chunk_size and max_matrix_elements must be >= 1, got {chunk_size}, "
            f"{max_matrix_elements}"
        )
    if not (torch.isfinite(bank_features).all() and torch.isfinite(query_features).all()):
        raise ValueError("features contain NaN or Inf")
    _check_labels(bank_labels, n_bank, None, name="bank_labels")
    extra = () if extra_labels is None else (extra_labels,)
    num_classes = resolve_num_classes(num_classes, bank_labels, *extra)
    device = bank_features.device
    dtype = torch.promote_types(
        torch.promote_types(bank_features.dtype, query_features.dtype), torch.float32
    )
    bank = _normalize(bank_features, dtype, device)
    queries = _normalize(query_features, dtype, device)
    labels = bank_labels.to(device=device, dtype=torch.long)
    rows = min(chunk_size, max(1, max_matrix_elements // n_bank))
    return bank, labels, queries, num_classes, rows


def _votes(sims: Tensor, neighbour_labels: Tensor, temperature: float, num_classes: int) -> Tensor:
    """Sums ``exp(sim / T)`` of the given neighbours per class: ``[c, k] -> [c, C]``."""
    weights = (sims / temperature).exp()
    if not torch.isfinite(weights).all():
        raise ValueError(
            f"exp(similarity / temperature) overflowed in {sims.dtype}: "
            f"temperature={temperature} is too small; use a larger one or float64 features"
        )
    out = torch.zeros(sims.shape[0], num_classes, dtype=sims.dtype, device=sims.device)
    return out.scatter_add_(1, neighbour_labels, weights)


@torch.no_grad()
def knn_scores(
    bank_features: Tensor,
    bank_labels: Tensor,
    query_features: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 4096,
    max_matrix_elements: int = 2**26,
) -> Tensor:
    """Scores every query by temperature-weighted votes of its k nearest bank samples.

    Features are L2-normalised (half precision is upcast to float32) and compared
    by cosine similarity. Neighbours are found with ``torch.topk``; if several
    bank samples tie exactly at the k-th similarity, which of them is kept is
    unspecified.

    Args:
        bank_features: Labelled reference features ``[Nb, D]`` (e.g. train set).
        bank_labels: Integer classes ``[Nb]``, non-negative.
        query_features: Features to classify ``[Nq, D]``; moved to the bank's device.
        k: Number of neighbours; clipped to ``Nb``.
        temperature: Vote weight is ``exp(cosine / temperature)``.
        num_classes: Number of classes C; defaults to ``max(bank_labels) + 1``.
        chunk_size: Largest number of queries scored at once.
        max_matrix_elements: Also caps the similarity entries held at once (one
            full row of ``Nb`` is the minimum), so huge banks do not exhaust memory.

    Returns:
        Class scores ``[Nq, C]`` on the bank's device (zero for classes with no
        neighbour).

    Raises:
        ValueError: On inconsistent shapes, bad labels, non-finite features or
            non-positive ``k``, ``temperature`` or ``chunk_size``, or if the
            temperature is so small that the weights overflow.

    Example:
        >>> bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> knn_scores(bank, torch.tensor([0, 1]), torch.tensor([[2.0, 0.1]]), k=1).argmax(1)
        tensor([0])
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    bank, labels, queries, num_classes, rows = _prepare(
        bank_features,
        bank_labels,
        query_features,
        num_classes,
        temperature,
        chunk_size,
        max_matrix_elements,
    )
    k = min(k, bank.shape[0])
    chunks = []
    for start in range(0, queries.shape[0], rows):
        sims, idx = (queries[start : start + rows] @ bank.T).topk(k, dim=1)
        chunks.append(_votes(sims, labels[idx], temperature, num_classes))
    return torch.cat(chunks)


@torch.no_grad()
def knn_metrics(
    bank_features: Tensor,
    bank_labels: Tensor,
    query_features: Tensor,
    query_labels: Tensor,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
    chunk_size: int = 4096,
    max_matrix_elements: int = 2**26,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Evaluates weighted kNN classification for several k at once.

    The top-``max(ks)`` neighbours of each query chunk are found once and the
    smaller k reuse their leading columns; the scores of :func:`knn_scores` are
    then ranked with the pessimistic tie rule of
    :func:`~mmcontrast.eval.classification.classification_metrics` (a class with
    no neighbour scores 0 and ties with the other empty classes).

    Args:
        bank_features: Labelled reference features ``[Nb, D]`` (e.g. train set).
        bank_labels: Integer classes ``[Nb]``.
        query_features: Evaluation features ``[Nq, D]``.
        query_labels: Integer classes ``[Nq]``.
        ks: Neighbour counts; each is clipped to ``Nb`` but keeps its name.
        temperature: Vote weight is ``exp(cosine / temperature)``.
        chunk_size: Largest number of queries scored at once.
        max_matrix_elements: Also caps the similarity entries held at once.
        num_classes: Number of classes C; defaults to the largest label in the
            bank or the queries plus one. ``acc5`` is skipped when C < 5.

    Returns:
        ``knn{k}_acc1``, ``knn{k}_acc5`` and ``knn{k}_mean_per_class_recall``
        for every k in ``ks``.

    Raises:
        ValueError: As :func:`knn_scores`, or on empty or non-positive ``ks``.
    """
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive ints, got {ks}")
    bank, labels, queries, num_classes, rows = _prepare(
        bank_features,
        bank_labels,
        query_features,
        num_classes,
        temperature,
        chunk_size,
        max_matrix_elements,
        extra_labels=query_labels,
    )
    _check_labels(query_labels, queries.shape[0], num_classes, name="query_labels")
    targets = query_labels.to(device=bank.device, dtype=torch.long)
    k_max = min(max(ks), bank.shape[0])
    ranks: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, queries.shape[0], rows):
        sims, idx = (queries[start : start + rows] @ bank.T).topk(k_max, dim=1)  # sorted
        neighbour_labels = labels[idx]
        chunk_targets = targets[start : start + rows]
        for k in ks:
            kk = min(k, k_max)
            votes = _votes(sims[:, :kk], neighbour_labels[:, :kk], temperature, num_classes)
            ranks[k].append(true_class_ranks(votes, chunk_targets))
    metrics: dict[str, float] = {}
    for k in ks:
        for name, value in metrics_from_ranks(
            torch.cat(ranks[k]), targets, num_classes, ks=(1, 5)
        ).items():
            metrics[f"knn{k}_{name}"] = value
    return metrics
