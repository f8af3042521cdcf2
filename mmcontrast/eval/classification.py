"""Classification metrics from class scores: top-k accuracy, mean per-class recall.

Definitions follow CLIP_benchmark (Cherti et al.): ``acc{k}`` is the fraction of
samples whose true class is among the k best-scored classes, and
``mean_per_class_recall`` is the mean, over the classes present in the labels, of
the fraction of that class's samples predicted correctly at top-1 (sklearn's
``balanced_accuracy_score``).

Everything is computed from one integer per sample, the number of other classes
ranked ahead of the true class (:func:`true_class_ranks`), so callers that
score samples chunk by chunk (kNN) need not keep the whole score matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["classification_metrics", "confusion_matrix", "metrics_from_ranks", "true_class_ranks"]

TieRule = Literal["pessimistic", "optimistic"]


def _check_labels(labels: Tensor, n: int, num_classes: int | None, name: str = "labels") -> None:
    """Checks an integer class vector of length n in [0, num_classes) (None: only >= 0)."""
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {labels.dtype}")
    if n == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        upper = "inf" if num_classes is None else num_classes
        raise ValueError(f"{name} must lie in [0, {upper}), got [{lo}, {hi}]")


@torch.no_grad()
def resolve_num_classes(num_classes: int | None, *labels: Tensor) -> int:
    """``num_classes`` checked against the largest label, or that label + 1 when None."""
    seen = max(int(t.max()) for t in labels if t.numel())
    if num_classes is None:
        return seen + 1
    if num_classes <= seen:
        raise ValueError(f"num_classes={num_classes} but labels go up to {seen}")
    return num_classes


def true_class_ranks(
    scores: Tensor,
    labels: Tensor,
    ties: TieRule = "pessimistic",
    same_class: Tensor | None = None,
) -> Tensor:
    """Counts, for every sample, the other classes ranked ahead of its true class.

    A sample is correct at top-k iff its rank is ``< k``; rank 0 is a correct
    top-1 prediction.

    Args:
        scores: Class scores ``[N, C]`` (logits, probabilities or kNN votes).
        labels: Integer true classes ``[N]`` in ``[0, C)``.
        ties: ``"pessimistic"`` (default) counts every other class whose score is
            ``>=`` the true class's score; ``"optimistic"`` only those strictly
            greater.
        same_class: Optional ``[C]`` integer ids: classes with the same id are
            copies of one class (a class name listed twice gives two identical
            zero-shot classifiers, which tie on every sample). A tie between
            copies goes to the lower index, as ``argmax`` breaks it; ties with
            other classes follow ``ties``.

    Returns:
        Long tensor ``[N]`` on the device of ``scores``.

    Raises:
        ValueError: On bad shapes, non-integer or out-of-range labels, or
            non-finite scores.
    """
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be 2-D [N, C] with C >= 1, got {tuple(scores.shape)}")
    _check_labels(labels, scores.shape[0], scores.shape[1])
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', got {ties!r}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    labels = labels.to(device=scores.device, dtype=torch.long)
    true = scores.gather(1, labels[:, None])  # the very numbers in `scores`, so no rounding issue
    if same_class is None:
        if ties == "optimistic":
            return (scores > true).sum(1)
        return (scores >= true).sum(1) - 1  # the true class itself is counted once
    if same_class.shape != (scores.shape[1],):
        raise ValueError(
            f"same_class must have shape [{scores.shape[1]}], got {tuple(same_class.shape)}"
        )
    same_class = same_class.to(scores.device)
    classes = torch.arange(scores.shape[1], device=scores.device)
    copy = same_class[None, :] == same_class[labels][:, None]
    tied = scores == true
    if ties == "optimistic":  # ties lost only to earlier copies
        earlier_copy = copy & (classes[None, :] < labels[:, None])
        return (scores > true).sum(1) + (tied & earlier_copy).sum(1)
    later_copy = copy & (classes[None, :] > labels[:, None])
    return (scores > true).sum(1) + (tied & ~later_copy).sum(1) - 1


@torch.no_grad()
def metrics_from_ranks(
    ranks: Tensor, labels: Tensor, num_classes: int, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Turns true-class ranks (see :func:`true_class_ranks`) into metrics.

    Args:
        ranks: Long tensor ``[N]``: other classes ranked ahead of the true class.
        labels: Integer true classes ``[N]`` in ``[0, num_classes)``.
        num_classes: Number of classes C; a k above C is skipped.
        ks: Cutoffs for ``acc{k}``.

    Returns:
        ``acc{k}`` for every k <= C, then ``mean_per_class_recall``.

    Raises:
        ValueError: On empty or mismatched inputs, or non-positive ``ks``.
    """
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {ks}")
    if ranks.ndim != 1 or ranks.numel() == 0:
        raise ValueError(f"ranks must be a non-empty 1-D tensor, got {tuple(ranks.shape)}")
    _check_labels(labels, ranks.shape[0], num_classes)
    labels = labels.to(device=ranks.device, dtype=torch.long)
    n = ranks.numel()
    metrics: dict[str, float] = {}
    for k in ks:
        if k <= num_classes:
            # Integer count then Python division: bit-identical on every device.
            metrics[f"acc{k}"] = int((ranks < k).sum()) / n
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    hits = torch.bincount(labels[ranks == 0], minlength=num_classes).tolist()
    recalls = [h / c for h, c in zip(hits, counts, strict=True) if c > 0]
    metrics["mean_per_class_recall"] = sum(recalls) / len(recalls)
    return metrics


@torch.no_grad()
def classification_metrics(
    scores: Tensor,
    labels: Tensor,
    ks: Sequence[int] = (1, 5),
    *,
    ties: TieRule = "pessimistic",
) -> dict[str, float]:
    """Computes top-k accuracy and mean per-class recall from class scores.

    * ``acc{k}``: fraction of samples whose label is among the top-k scores
      (one key per k; a k larger than C is skipped).
    * ``mean_per_class_recall``: mean over the classes present in ``labels`` of
      (correct top-1 predictions of that class / its count). Classes that only
      appear as predictions do not enter the mean.

    Tie rule: with the default ``ties="pessimistic"`` the label is in the top-k
    iff ``(number of other classes scoring >= the label's score) < k``, i.e. the
    true class loses every tie. This is deterministic and is the worst case of
    ``torch.topk`` (whose order among equal scores is unspecified), so constant
    scores (a collapsed model, or kNN votes of zero) score ``acc{k} = 0`` for
    k < C instead of a lucky hit. The same rule decides a correct top-1
    prediction in ``mean_per_class_recall``. ``ties="optimistic"`` counts only
    strictly greater scores.

    Args:
        scores: Class scores ``[N, C]`` (logits, probabilities or votes).
        labels: Integer true classes ``[N]`` in ``[0, C)``.
        ks: Cutoffs for ``acc{k}``.
        ties: ``"pessimistic"`` (default) or ``"optimistic"``.

    Returns:
        Metric name -> Python float.

    Raises:
        ValueError: On bad shapes, empty input, non-integer or out-of-range
            labels, NaN scores or non-positive ``ks``.

    Example:
        >>> scores = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
        >>> classification_metrics(scores, torch.tensor([0, 1]), ks=(1,))
        {'acc1': 0.5, 'mean_per_class_recall': 0.5}
    """
    if scores.ndim == 2 and scores.shape[0] == 0:
        raise ValueError("need at least one sample")
    ranks = true_class_ranks(scores, labels, ties=ties)
    return metrics_from_ranks(ranks, labels, scores.shape[1], ks)


@torch.no_grad()
def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts (true class, predicted class) pairs.

    Args:
        predictions: Integer predicted classes ``[N]`` in ``[0, num_classes)``
            (e.g. ``scores.argmax(1)``).
        labels: Integer true classes ``[N]`` in ``[0, num_classes)``.
        num_classes: Number of classes C.

    Returns:
        Long tensor ``[C, C]`` on the device of ``labels``: entry ``[i, j]`` is
        the number of samples of true class i predicted as j (rows true,
        columns predicted).

    Raises:
        ValueError: On mismatched shapes, a non-positive ``num_classes`` or
            non-integer or out-of-range values.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    _check_labels(labels, labels.shape[0], num_classes)
    _check_labels(predictions, labels.shape[0], num_classes, name="predictions")
    flat = labels.long() * num_classes + predictions.to(labels.device).long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)
