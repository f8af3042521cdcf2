"""Zero-shot classification: class embeddings from prompts, cosine logits, metrics.

Follows CLIP (Radford et al. 2021, "Learning Transferable Visual Models From
Natural Language Supervision") as implemented by open_clip and CLIP_benchmark
(Cherti et al. 2023, "Reproducible scaling laws for contrastive language-image
learning"): each class is the re-normalised mean of its L2-normalised prompt
embeddings, an image's logits are ``100 * cos(image, class)``, and the metrics are
CLIP_benchmark's ``acc1``, ``acc5`` and ``mean_per_class_recall``.

Text is encoded in batches that span classes, logits and metrics are computed in
row chunks, so memory stays bounded for large datasets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcontrast.eval.classification import _check_labels, metrics_from_ranks, true_class_ranks
from mmcontrast.eval.templates import TemplateSpec, resolve_templates

__all__ = [
    "build_zero_shot_classifier",
    "zero_shot_evaluate",
    "zero_shot_logits",
    "zero_shot_metrics",
]

_DEFAULT_MAX_ELEMENTS = 2**26  # 256 MiB of float32 per chunk


def _class_embedding(rows: Tensor) -> Tensor:
    """``[T, D]`` raw template embeddings -> normalise each, average, re-normalise."""
    return F.normalize(F.normalize(rows, dim=-1).mean(0), dim=0)


@torch.no_grad()
def build_zero_shot_classifier(
    encode_texts: Callable[[list[str]], Tensor],
    class_names: Sequence[str],
    templates: TemplateSpec = "openai_imagenet",
    batch_size: int = 256,
) -> Tensor:
    """Embeds every class as the average of its prompt embeddings.

    For each class, every template is filled with the class name and embedded;
    the embeddings are L2-normalised, averaged over templates and normalised again
    (CLIP, open_clip's ``build_zero_shot_classifier``, CLIP_benchmark). The texts
    of all classes are streamed through ``encode_texts`` in batches of
    ``batch_size`` (class by class, template order kept), so a batch holds several
    classes or part of one. Each class is reduced from its own ``[T, D]`` rows on
    the CPU in float32, so the result does not depend on ``batch_size`` as long as
    ``encode_texts`` embeds each text independently of its batch mates.

    Args:
        encode_texts: Maps a list of B strings to a ``[B, D]`` tensor (any device
            and float dtype; it is moved to the CPU and cast to float32), e.g. a
            tokenizer followed by ``model.get_text_features``.
        class_names: The C class names, in label order.
        templates: A template set name, a format string or a list of templates;
            see :func:`~mmcontrast.eval.templates.resolve_templates`.
        batch_size: Largest number of texts per ``encode_texts`` call.

    Returns:
        Float32 CPU tensor ``[C, D]`` of unit-norm class embeddings (row c is
        class c).

    Raises:
        ValueError: On no class names, a non-string name, bad templates, a
            ``batch_size`` below 1, or an ``encode_texts`` output that is not
            ``[B, D]`` with a fixed D or is not finite.

    Example:
        >>> def encode(texts):  # bag of letters
        ...     return torch.stack([torch.tensor([t.count("a"), t.count("o"), 1.0]) for t in texts])
        >>> build_zero_shot_classifier(encode, ["cat", "dog"], "name").shape
        torch.Size([2, 3])
    """
    names = list(class_names)
    if not names:
        raise ValueError("need at least one class name")
    if not all(isinstance(n, str) for n in names):
        raise ValueError("class_names must be strings")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fill = resolve_templates(templates)
    n_templates = len(fill)
    texts = (template(name) for name in names for template in fill)
    total = len(names) * n_templates

    classes: list[Tensor] = []
    pending: Tensor | None = None  # embeddings not yet assigned to a finished class
    for start in range(0, total, batch_size):
        batch = [next(texts) for _ in range(min(batch_size, total - start))]
        out = encode_texts(batch)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != len(batch):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"encode_texts must return a [{len(batch)}, D] tensor, got {shape}")
        out = out.detach().to(device="cpu", dtype=torch.float32)
        if pending is not None and out.shape[1] != pending.shape[1]:
            raise ValueError(f"encode_texts changed dim from {pending.shape[1]} to {out.shape[1]}")
        if not torch.isfinite(out).all():
            raise ValueError("encode_texts returned NaN or Inf")
        pending = out if pending is None else torch.cat([pending, out])
        while pending.shape[0] >= n_templates:
            classes.append(_class_embedding(pending[:n_templates]))
            pending = pending[n_templates:]
    return torch.stack(classes)


def _check_features(image_features: Tensor, classifier: Tensor, max_matrix_elements: int) -> None:
    if image_features.ndim != 2 or classifier.ndim != 2:
        raise ValueError(
            "image_features [N, D] and classifier [C, D] must be 2-D, got "
            f"{tuple(image_features.shape)} and {tuple(classifier.shape)}"
        )
    if image_features.shape[1] != classifier.shape[1]:
        raise ValueError(
            f"feature dims differ: images {image_features.shape[1]}, classifier "
            f"{classifier.shape[1]}"
        )
    if classifier.shape[0] == 0:
        raise ValueError("classifier has no classes")
    if max_matrix_elements < 1:
        raise ValueError(f"max_matrix_elements must be >= 1, got {max_matrix_elements}")


def _logit_chunks(
    image_features: Tensor, classifier: Tensor, scale: float, max_matrix_elements: int
) -> tuple[int, Callable[[int], Tensor]]:
    """Rows per chunk and a function ``start -> logits of rows [start, start + rows)``."""
    _check_features(image_features, classifier, max_matrix_elements)
    device = image_features.device
    dtype = torch.promote_types(
        torch.promote_types(image_features.dtype, classifier.dtype), torch.float32
    )
    classes = F.normalize(classifier.detach().to(device=device, dtype=dtype), dim=-1)
    rows = max(1, max_matrix_elements // classes.shape[0])

    def chunk(start: int) -> Tensor:
        images = F.normalize(image_features[start : start + rows].detach().to(dtype), dim=-1)
        return scale * (images @ classes.T)

    return rows, chunk


@torch.no_grad()
def zero_shot_logits(
    image_features: Tensor,
    classifier: Tensor,
    scale: float = 100.0,
    max_matrix_elements: int = _DEFAULT_MAX_ELEMENTS,
) -> Tensor:
    """Cosine-similarity logits ``scale * cos(image, class)``.

    Image features and class embeddings are L2-normalised (the latter is a no-op
    for :func:`build_zero_shot_classifier` output). Rows are processed in chunks
    of at most ``max_matrix_elements`` logits, so only the output itself scales
    with N; the result does not depend on the chunking.

    Args:
        image_features: Image embeddings ``[N, D]``.
        classifier: Class embeddings ``[C, D]``; moved to the images' device.
        scale: Multiplier of the cosine; 100 as in CLIP and CLIP_benchmark.
        max_matrix_elements: Largest number of logits computed at once (one row
            is the minimum).

    Returns:
        Logits ``[N, C]`` on the images' device, in float32 (float64 if either
        input is float64).

    Raises:
        ValueError: On non-2-D inputs, mismatched D, zero classes or a
            non-positive ``max_matrix_elements``.

    Example:
        >>> zero_shot_logits(torch.tensor([[2.0, 0.0], [0.0, -3.0]]), torch.eye(2))
        tensor([[ 100.,    0.],
                [   0., -100.]])
    """
    rows, chunk = _logit_chunks(image_features, classifier, scale, max_matrix_elements)
    return torch.cat([chunk(start) for start in range(0, max(image_features.shape[0], 1), rows)])


def _metrics_from_ranks(
    ranks: Tensor, labels: Tensor, num_classes: int, ks: Sequence[int]
) -> dict[str, float]:
    """:func:`metrics_from_ranks`, with ``acc{k}`` set to NaN rather than dropped when k > C."""
    ks = [int(k) for k in ks]
    computed = metrics_from_ranks(ranks, labels, num_classes, ks)
    metrics = {f"acc{k}": computed.get(f"acc{k}", math.nan) for k in ks}
    metrics["mean_per_class_recall"] = computed["mean_per_class_recall"]
    return metrics


def _check_ks(ks: Sequence[int]) -> None:
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive ints, got {list(ks)}")


@torch.no_grad()
def zero_shot_metrics(
    logits: Tensor,
    labels: Tensor,
    ks: Sequence[int] = (1, 5),
    max_matrix_elements: int = _DEFAULT_MAX_ELEMENTS,
) -> dict[str, float]:
    """CLIP_benchmark's zero-shot metrics from logits.

    * ``acc{k}``: fraction of all samples whose true class is among the k
      highest logits. When k exceeds the number of classes C the key is still
      present with value NaN, as CLIP_benchmark reports ``acc5`` for datasets
      with fewer than 5 classes (so result tables keep one schema).
    * ``mean_per_class_recall``: mean over the classes present in ``labels`` of
      the fraction of that class's samples predicted correctly at top-1 (sklearn's
      ``balanced_accuracy_score`` of the argmax predictions).

    Ties use the pessimistic rule of
    :func:`~mmcontrast.eval.classification.classification_metrics`: the true
    class loses every tie, so it counts as top-k iff fewer than k other classes
    score ``>=`` it. CLIP_benchmark uses ``torch.topk`` / ``argmax``, whose
    choice among exactly equal logits is arbitrary; without exact ties both agree,
    with ties this gives their worst case (constant logits score 0, not 1/C).
    The values equal ``classification_metrics(logits, labels, ks)`` plus the NaN
    keys; rows are ranked in chunks of ``max_matrix_elements`` entries so the
    temporary ``[N, C]`` comparison masks are never built whole.

    Args:
        logits: Class scores ``[N, C]``, N >= 1 (e.g. :func:`zero_shot_logits`).
        labels: Integer true classes ``[N]`` in ``[0, C)``.
        ks: Cutoffs for ``acc{k}``.
        max_matrix_elements: Largest number of score entries ranked at once.

    Returns:
        ``acc{k}`` for every k in ``ks`` (NaN where k > C), then
        ``mean_per_class_recall``, as Python floats.

    Raises:
        ValueError: On bad shapes, empty input, non-integer or out-of-range
            labels, NaN logits, or empty or non-positive ``ks``.

    Example:
        >>> logits = torch.tensor([[9.0, 1.0, 0.0], [2.0, 5.0, 1.0], [3.0, 0.0, 1.0]])
        >>> zero_shot_metrics(logits, torch.tensor([0, 1, 2]), ks=(1, 2, 5))
        {'acc1': 0.6666666666666666, 'acc2': 1.0, 'acc5': nan, 'mean_per_class_recall': 0.6666666666666666}
    """
    _check_ks(ks)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must be [N, C] with N, C >= 1, got {tuple(logits.shape)}")
    if max_matrix_elements < 1:
        raise ValueError(f"max_matrix_elements must be >= 1, got {max_matrix_elements}")
    n, num_classes = logits.shape
    _check_labels(labels, n, num_classes)
    rows = max(1, max_matrix_elements // num_classes)
    labels = labels.to(logits.device)
    ranks = torch.cat(
        [
            true_class_ranks(logits[start : start + rows], labels[start : start + rows])
            for start in range(0, n, rows)
        ]
    )
    return _metrics_from_ranks(ranks, labels, num_classes, ks)


def _first_copy(copies: Tensor) -> Tensor | None:
    """For each class, the first class with the same id (None when all ids differ)."""
    groups = int(copies.max()) + 1 if copies.numel() else 0
    if groups == copies.numel():
        return None
    classes = torch.arange(copies.numel(), device=copies.device)
    first = torch.full((groups,), copies.numel(), dtype=torch.long, device=copies.device)
    first.scatter_reduce_(0, copies, classes, reduce="amin")
    return first[copies]


@torch.no_grad()
def zero_shot_evaluate(
    image_features: Tensor,
    labels: Tensor,
    classifier: Tensor,
    ks: Sequence[int] = (1, 5),
    scale: float = 100.0,
    max_matrix_elements: int = _DEFAULT_MAX_ELEMENTS,
) -> tuple[dict[str, float], Tensor]:
    """Metrics and top-1 predictions straight from features, never holding all logits.

    Equivalent to ``zero_shot_metrics(zero_shot_logits(image_features,
    classifier, scale), labels, ks)`` together with ``logits.argmax(1)`` (but for
    identical classifier rows, below), except that each chunk of logits is ranked
    and dropped, so memory is ``O(N)`` plus one chunk. The predictions feed
    :func:`~mmcontrast.eval.classification.confusion_matrix`; note that
    ``argmax`` breaks exact ties towards the lowest class index, while the
    metrics use the pessimistic tie rule, so under ties the confusion matrix
    diagonal can exceed the counted hits. One exception: classes whose
    classifier rows are identical (a class name listed twice, as ``missile`` and
    ``sunglasses`` are in the usual ImageNet list) are given the first one's logit
    (a matrix product may round them apart) and so tie on every image; the tie
    goes to the first of them, as CLIP_benchmark's ``argmax`` gives it.

    Args:
        image_features: Image embeddings ``[N, D]``, N >= 1.
        labels: Integer true classes ``[N]`` in ``[0, C)``.
        classifier: Class embeddings ``[C, D]``.
        ks: Cutoffs for ``acc{k}`` (NaN where k > C).
        scale: Multiplier of the cosine.
        max_matrix_elements: Largest number of logits held at once.

    Returns:
        ``(metrics, predictions)``: the dict of :func:`zero_shot_metrics` and a
        long tensor ``[N]`` of argmax classes on the images' device.

    Raises:
        ValueError: As :func:`zero_shot_logits` and :func:`zero_shot_metrics`.

    Example:
        >>> metrics, pred = zero_shot_evaluate(
        ...     torch.tensor([[1.0, 0.1], [0.2, 1.0]]), torch.tensor([0, 0]), torch.eye(2), ks=(1,)
        ... )
        >>> metrics, pred.tolist()
        ({'acc1': 0.5, 'mean_per_class_recall': 0.5}, [0, 1])
    """
    _check_ks(ks)
    rows, chunk = _logit_chunks(image_features, classifier, scale, max_matrix_elements)
    n, num_classes = image_features.shape[0], classifier.shape[0]
    if n == 0:
        raise ValueError("need at least one image")
    _check_labels(labels, n, num_classes)
    labels = labels.to(image_features.device)
    copies = torch.unique(classifier, dim=0, return_inverse=True)[1]  # same id: identical rows
    first_copy = _first_copy(copies)
    ranks, predictions = [], []
    for start in range(0, n, rows):
        logits = chunk(start)
        if first_copy is not None:  # a product may round copies apart: give them one score
            logits = logits.index_select(1, first_copy.to(logits.device))
        ranks.append(true_class_ranks(logits, labels[start : start + rows], same_class=copies))
        predictions.append(logits.argmax(1))
    metrics = _metrics_from_ranks(torch.cat(ranks), labels, num_classes, ks)
    return metrics, torch.cat(predictions)
