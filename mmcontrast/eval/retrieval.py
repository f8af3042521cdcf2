"""Zero-shot image-text retrieval metrics (recall@k, mean and median rank).

Metric names follow CLIP_benchmark: ``image_retrieval_*`` is text -> image
retrieval (a caption queries the image gallery) and ``text_retrieval_*`` is
image -> text retrieval (an image queries the caption gallery).

Ranks are computed by counting, chunk by chunk, so the full similarity matrix is
never materialised and nothing is sorted except the final rank vectors.

Under the default (pessimistic) tie rule, a caption whose text is also a caption of another
image ties with that copy, so recall cannot reach 1; :func:`repeated_captions` counts such
captions and the highest recall@k the split allows.

:func:`grouped_retrieval_metrics` scores each group of images (a language, a domain) among
its own images and captions only, as a benchmark of that group alone would (CLIP_benchmark's
per-language XTD / Multi30k numbers); :func:`split_groups` gives the groups' indices.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CaptionRepeats",
    "RetrievalGroup",
    "format_table",
    "grouped_retrieval_metrics",
    "repeated_captions",
    "retrieval_metrics",
    "retrieval_ranks",
    "split_groups",
]

TieRule = Literal["pessimistic", "optimistic"]


def _check_inputs(image_features: Tensor, text_features: Tensor, text_to_image: Tensor) -> None:
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError(
            "image_features and text_features must be 2-D [N, D], got shapes "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"feature dims differ: images {image_features.shape[1]}, texts {text_features.shape[1]}"
        )
    if image_features.shape[0] == 0 or text_features.shape[0] == 0:
        raise ValueError("need at least one image and one text")
    if text_to_image.ndim != 1 or text_to_image.shape[0] != text_features.shape[0]:
        raise ValueError(
            f"text_to_image must have shape [{text_features.shape[0]}], "
            f"got {tuple(text_to_image.shape)}"
        )
    if text_to_image.dtype.is_floating_point or text_to_image.dtype == torch.bool:
        raise ValueError(f"text_to_image must be an integer tensor, got {text_to_image.dtype}")
    lo, hi = int(text_to_image.min()), int(text_to_image.max())
    if lo < 0 or hi >= image_features.shape[0]:
        raise ValueError(
            f"text_to_image values must lie in [0, {image_features.shape[0]}), got [{lo}, {hi}]"
        )
    if not (torch.isfinite(image_features).all() and torch.isfinite(text_features).all()):
        raise ValueError("features contain NaN or Inf")


def _rows_per_chunk(n_cols: int, chunk_size: int | None, max_matrix_elements: int) -> int:
    if max_matrix_elements < 1:
        raise ValueError(f"max_matrix_elements must be >= 1, got {max_matrix_elements}")
    rows = max(1, max_matrix_elements // n_cols)
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        rows = min(rows, chunk_size)
    return rows


def _normalize(x: Tensor) -> Tensor:
    dtype = torch.promote_types(x.dtype, torch.float32)
    return F.normalize(x.detach().to(dtype), dim=-1)


@torch.no_grad()
def retrieval_ranks(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor,
    chunk_size: int | None = None,
    max_matrix_elements: int = 2**26,
    ties: TieRule = "pessimistic",
) -> tuple[Tensor, Tensor]:
    """Computes the 1-based rank of the best-ranked correct item for every query.

    See :func:`retrieval_metrics` for the argument semantics and the tie rule.

    Returns:
        ``(text_to_image_ranks, image_to_text_ranks)``: long tensors of shape
        ``[Nt]`` and ``[Ni]`` on the input device. Images without any caption
        get rank 0 (they have no correct item).
    """
    _check_inputs(image_features, text_features, text_to_image)
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', got {ties!r}")
    device = image_features.device
    images = _normalize(image_features)
    texts = _normalize(text_features.to(device))
    dtype = torch.promote_types(images.dtype, texts.dtype)
    images, texts = images.to(dtype), texts.to(dtype)
    t2i = text_to_image.to(device=device, dtype=torch.long)
    n_img, n_txt = images.shape[0], texts.shape[0]
    pessimistic = ties == "pessimistic"

    # Text -> image: exactly one correct image per text.
    t2i_ranks = torch.empty(n_txt, dtype=torch.long, device=device)
    step = _rows_per_chunk(n_img, chunk_size, max_matrix_elements)
    for start in range(0, n_txt, step):
        stop = min(start + step, n_txt)
        sims = texts[start:stop] @ images.T  # [c, Ni]
        correct = sims.gather(1, t2i[start:stop, None])  # [c, 1], same numbers as in sims
        # the correct image itself is counted once by the pessimistic rule
        beaten = _count_in_place(sims, correct, pessimistic) - int(pessimistic)
        t2i_ranks[start:stop] = beaten + 1

    # Image -> text: any of the image's captions counts; texts grouped by image.
    order = torch.argsort(t2i, stable=True)
    sorted_img = t2i[order]
    i2t_ranks = torch.zeros(n_img, dtype=torch.long, device=device)
    step = _rows_per_chunk(n_txt, chunk_size, max_matrix_elements)
    for start in range(0, n_img, step):
        stop = min(start + step, n_img)
        bounds = torch.tensor([start, stop], device=device)
        lo, hi = torch.searchsorted(sorted_img, bounds).tolist()
        if lo == hi:  # no image in this chunk has a caption
            continue
        pos_text = order[lo:hi]
        pos_row = sorted_img[lo:hi] - start
        sims = images[start:stop] @ texts.T  # [c, Nt]
        pos_sims = sims[pos_row, pos_text]
        best = torch.full((stop - start,), -math.inf, dtype=sims.dtype, device=device)
        best = best.scatter_reduce(0, pos_row, pos_sims, reduce="amax")
        if pessimistic:
            # Count every text at least as similar as the best caption, minus the
            # captions of this image that tie with the best one (they are correct).
            tied_pos = torch.zeros(stop - start, dtype=torch.long, device=device).scatter_add(
                0, pos_row, (pos_sims >= best[pos_row]).long()
            )
            beaten = _count_in_place(sims, best[:, None], True) - tied_pos
        else:
            beaten = _count_in_place(sims, best[:, None], False)
        has_caption = torch.isfinite(best)
        i2t_ranks[start:stop] = torch.where(has_caption, beaten + 1, torch.zeros_like(beaten))
    return t2i_ranks, i2t_ranks


def _count_in_place(sims: Tensor, threshold: Tensor, or_equal: bool) -> Tensor:
    """Per row, how many entries are >= (or >) ``threshold``; overwrites ``sims``.

    Comparing in place and summing the 0/1 floats avoids a boolean mask and its int64
    copy (a third of the time and two thirds of the memory of a chunk). Float sums of
    ones are exact below 2**24 columns (float32); wider rows fall back to integer sums.
    """
    exact_limit = 2**24 if sims.dtype == torch.float32 else 2**53
    if sims.dtype not in (torch.float32, torch.float64) or sims.shape[1] >= exact_limit:
        hits = sims >= threshold if or_equal else sims > threshold
        return hits.sum(1)
    hits = sims.ge_(threshold) if or_equal else sims.gt_(threshold)
    return hits.sum(1).long()


def _median(ranks: Tensor) -> float:
    v = ranks.sort().values
    n = v.numel()
    return (int(v[(n - 1) // 2]) + int(v[n // 2])) / 2


def _fraction_at_most(ranks: Tensor, k: int) -> float:
    # Integer count then Python division: bit-identical on every device.
    return int((ranks <= k).sum()) / ranks.numel()


@torch.no_grad()
def retrieval_metrics(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
    max_matrix_elements: int = 2**26,
    *,
    ties: TieRule = "pessimistic",
) -> dict[str, float]:
    """Computes CLIP-style image-text retrieval metrics from embeddings.

    Features are L2-normalised and compared by cosine similarity (half-precision
    inputs are upcast to float32). For every query, the rank of its best-ranked
    correct item is computed by counting competitors, then

    * ``image_retrieval_recall@k`` (text -> image): fraction of texts whose image
      is among the top-k images; averaged over all texts.
    * ``text_retrieval_recall@k`` (image -> text): fraction of images with ANY of
      their captions among the top-k texts; averaged over images that have at
      least one caption. Images without captions are excluded from all
      ``text_retrieval_*`` values (CLIP_benchmark would count them as misses).
    * ``{image,text}_retrieval_{mean,median}_rank``: mean and median of the
      1-based ranks (median of an even count is the mean of the two middle
      values, as in ``numpy.median``).

    Tie rule: with the default ``ties="pessimistic"``, the rank of a query is
    ``1 + (number of incorrect candidates whose similarity is >= the best
    correct similarity)``, i.e. the correct item loses every tie, the worst case
    of CLIP_benchmark's ``torch.topk`` (whose tie order is unspecified). A
    collapsed model (all embeddings equal) therefore scores recall ~k/N, not 1.
    ``ties="optimistic"`` counts only strictly greater similarities. Both rules
    are deterministic and do not depend on chunking, as every similarity is
    compared with the correct one taken from the same matrix product (up to
    floating-point rounding differences between matmul shapes). On GPU, float32
    products follow torch's global TF32 setting. Recalls and ranks are
    aggregated from integer counts, so results are bit-identical across devices
    whenever the ranks agree.

    Args:
        image_features: Image embeddings ``[Ni, D]``.
        text_features: Text embeddings ``[Nt, D]``.
        text_to_image: Integer tensor ``[Nt]``: the image index of each text.
            Several texts may share an image; an image may have no text.
        ks: Cutoffs for recall@k (a k above the gallery size gives recall 1).
        chunk_size: Optional upper bound on the number of query rows per chunk.
        max_matrix_elements: Largest number of similarity entries held at once;
            one full row is the minimum, whatever this value.
        ties: Tie rule, ``"pessimistic"`` (default) or ``"optimistic"``.

    Returns:
        Metric name -> Python float, with the keys listed above.

    Raises:
        ValueError: On inconsistent shapes, out-of-range indices, non-integer
            ``text_to_image``, non-finite features or non-positive ``ks``.
    """
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {ks}")
    t2i_ranks, i2t_ranks = retrieval_ranks(
        image_features,
        text_features,
        text_to_image,
        chunk_size=chunk_size,
        max_matrix_elements=max_matrix_elements,
        ties=ties,
    )
    i2t_ranks = i2t_ranks[i2t_ranks > 0]  # drop images without captions
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = _fraction_at_most(t2i_ranks, k)
        metrics[f"text_retrieval_recall@{k}"] = _fraction_at_most(i2t_ranks, k)
    metrics["image_retrieval_mean_rank"] = int(t2i_ranks.sum()) / t2i_ranks.numel()
    metrics["image_retrieval_median_rank"] = _median(t2i_ranks)
    metrics["text_retrieval_mean_rank"] = int(i2t_ranks.sum()) / i2t_ranks.numel()
    metrics["text_retrieval_median_rank"] = _median(i2t_ranks)
    return metrics


@dataclass(frozen=True)
class RetrievalGroup:
    """The images of one group and their captions, as indices into the whole split."""

    name: str
    images: Tensor  # [Ng] long: the group's images, in split order
    texts: Tensor  # [Tg] long: the captions of those images, in split order
    text_to_image: Tensor  # [Tg] long: each caption's image, as an index into ``images``


def split_groups(
    image_groups: Sequence[Hashable | None], text_to_image: Tensor
) -> list[RetrievalGroup]:
    """Splits a retrieval set by a value per image: each group, its images and their captions.

    Args:
        image_groups: One value per image (a language code, a domain); ``None`` leaves the
            image (and its captions) out of every group. Values are named by ``str(value)``.
        text_to_image: ``[Nt]`` the image index of each caption.

    Returns:
        One :class:`RetrievalGroup` per distinct value, sorted by name.

    Raises:
        ValueError: If an index of ``text_to_image`` has no value in ``image_groups``.

    Example:
        >>> groups = split_groups(["en", "de", "en"], torch.tensor([0, 1, 2, 2]))
        >>> [(g.name, g.images.tolist(), g.texts.tolist()) for g in groups]
        [('de', [1], [1]), ('en', [0, 2], [0, 2, 3])]
        >>> groups[1].text_to_image.tolist()
        [0, 1, 1]
    """
    owners = text_to_image.detach().to("cpu", torch.long)
    if owners.numel() and int(owners.max()) >= len(image_groups):
        raise ValueError(
            f"text_to_image refers to image {int(owners.max())}, but only "
            f"{len(image_groups)} images have a group value"
        )
    members: dict[str, list[int]] = defaultdict(list)
    for image, value in enumerate(image_groups):
        if value is not None:
            members[str(value)].append(image)
    groups = []
    for name in sorted(members):
        images = torch.tensor(members[name], dtype=torch.long)
        local = torch.full((len(image_groups),), -1, dtype=torch.long)
        local[images] = torch.arange(len(images))
        texts = torch.nonzero(local[owners] >= 0).flatten()
        groups.append(RetrievalGroup(name, images, texts, local[owners[texts]]))
    return groups


@torch.no_grad()
def grouped_retrieval_metrics(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor,
    image_groups: Sequence[Hashable | None],
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
    max_matrix_elements: int = 2**26,
    *,
    ties: TieRule = "pessimistic",
) -> dict[str, dict[str, float]]:
    """:func:`retrieval_metrics` of each group of images among that group's own items.

    A group's captions query the group's images only, and its images query the group's
    captions only: each group is scored as a benchmark of that group alone (a language of
    XTD or Multi30k, as CLIP_benchmark scores each language). The features are computed
    once for the whole split; each group takes its rows of the similarity matrix.

    Args:
        image_features: Image embeddings ``[Ni, D]`` of the whole split.
        text_features: Text embeddings ``[Nt, D]`` of the whole split.
        text_to_image: ``[Nt]`` the image index of each text.
        image_groups: One value per image (``None``: in no group); see :func:`split_groups`.
        ks, chunk_size, max_matrix_elements, ties: As :func:`retrieval_metrics`.

    Returns:
        Group name -> that group's metrics (the keys of :func:`retrieval_metrics`), sorted
        by name.

    Raises:
        ValueError: As :func:`retrieval_metrics`, or if ``image_groups`` does not give one
            value per image.

    Example:
        >>> images = torch.eye(3)  # the "de" caption lies closest to an "en" image
        >>> texts = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.0, 0.0, 1.0]])
        >>> whole = retrieval_metrics(images, texts, torch.arange(3), ks=(1,))
        >>> whole["image_retrieval_recall@1"]
        0.6666666666666666
        >>> by_group = grouped_retrieval_metrics(
        ...     images, texts, torch.arange(3), ["en", "de", "en"], ks=(1,)
        ... )
        >>> {name: m["image_retrieval_recall@1"] for name, m in by_group.items()}
        {'de': 1.0, 'en': 1.0}
    """
    if len(image_groups) != image_features.shape[0]:
        raise ValueError(
            f"image_groups has {len(image_groups)} values for {image_features.shape[0]} images"
        )
    device = image_features.device
    results: dict[str, dict[str, float]] = {}
    for group in split_groups(image_groups, text_to_image):
        results[group.name] = retrieval_metrics(
            image_features[group.images.to(device)],
            text_features[group.texts.to(text_features.device)],
            group.text_to_image,
            ks=ks,
            chunk_size=chunk_size,
            max_matrix_elements=max_matrix_elements,
            ties=ties,
        )
    return results


@dataclass(frozen=True)
class CaptionRepeats:
    """Captions whose text belongs to several images, and the recall they leave reachable.

    ``max_recall`` maps ``image_retrieval_recall@k`` / ``text_retrieval_recall@k`` to the
    highest value the split allows under the pessimistic tie rule (1.0 without repeats).
    """

    captions: int  # captions whose exact text is also a caption of another image
    texts: int  # distinct texts shared by several images
    max_recall: dict[str, float]


def repeated_captions(
    captions: Sequence[str], text_to_image: Sequence[int] | Tensor, ks: Sequence[int] = (1, 5, 10)
) -> CaptionRepeats:
    """Counts captions repeated across images and the recall@k they cap (pessimistic ties).

    Identical texts get identical embeddings, so:

    * text -> image: the copies of a text rank the images in one order, and at most ``k``
      images can be within its top k. Of a text held by several images, only the copies
      of the ``k`` images holding most of them can count; the bound is that count over
      all texts.
    * image -> text: an image's best caption ties with every copy of its text held by
      other images, all counted ahead of it; an image reaches rank ``1 + c`` at best,
      ``c`` the fewest such copies over its captions. The bound is the fraction of
      captioned images whose best rank is ``<= k``.

    These are upper bounds (each reachable on its own, not necessarily all at once); the
    optimistic tie rule has no such cap. Texts are compared exactly as given.

    Args:
        captions: The caption texts, aligned with ``text_to_image``.
        text_to_image: The image index of each caption.
        ks: Cutoffs of the recall bounds.

    Returns:
        The counts and the bounds; ``captions == 0`` means no caption is repeated across
        images and every bound is 1.0.

    Example:
        >>> caps = repeated_captions(["a cat", "a cat", "a dog"], [0, 1, 2], ks=(1,))
        >>> caps.captions, caps.max_recall["text_retrieval_recall@1"]
        (2, 0.3333333333333333)
    """
    indices = text_to_image.tolist() if isinstance(text_to_image, Tensor) else text_to_image
    owners = [int(i) for i in indices]
    if len(owners) != len(captions):
        raise ValueError(f"got {len(captions)} captions for {len(owners)} image indices")
    holders: dict[str, Counter[int]] = defaultdict(Counter)  # text -> image -> copies
    for text, image in zip(captions, owners, strict=True):
        holders[text][image] += 1
    shared = {text: held for text, held in holders.items() if len(held) > 1}
    # image -> text: per image, the fewest copies of one of its texts held elsewhere
    ahead: dict[int, int] = {}
    for held in holders.values():
        total = sum(held.values())
        for image, copies in held.items():
            ahead[image] = min(ahead.get(image, total), total - copies)
    max_recall: dict[str, float] = {}
    for k in ks:
        kept = sum(sum(sorted(held.values(), reverse=True)[:k]) for held in holders.values())
        max_recall[f"image_retrieval_recall@{k}"] = kept / len(owners) if owners else 1.0
        reachable = sum(1 for others in ahead.values() if others + 1 <= k)
        max_recall[f"text_retrieval_recall@{k}"] = reachable / len(ahead) if ahead else 1.0
    return CaptionRepeats(
        captions=sum(sum(held.values()) for held in shared.values()),
        texts=len(shared),
        max_recall=max_recall,
    )


def format_table(metrics: dict[str, float]) -> str:
    """Formats retrieval metrics as a plain-text table.

    Rows are text->image (``image_retrieval_*``) and image->text
    (``text_retrieval_*``); columns are R@k for every k present (in percent),
    mean rank and median rank. Missing values are shown as ``-``.

    Args:
        metrics: Output of :func:`retrieval_metrics` (extra keys are ignored).

    Returns:
        The table, without a trailing newline.
    """
    pattern = re.compile(r"^(?:image|text)_retrieval_recall@(\d+)$")
    ks = sorted({int(m.group(1)) for key in metrics if (m := pattern.match(key))})
    header = ["", *(f"R@{k}" for k in ks), "mean rank", "median rank"]
    rows = [header]
    for label, prefix in (("text->image", "image_retrieval"), ("image->text", "text_retrieval")):
        cells = [label]
        for k in ks:
            value = metrics.get(f"{prefix}_recall@{k}")
            cells.append("-" if value is None else f"{100 * value:.2f}")
        for stat in ("mean_rank", "median_rank"):
            value = metrics.get(f"{prefix}_{stat}")
            cells.append("-" if value is None else f"{value:.1f}")
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        first = row[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        lines.append("  ".join([first, *rest]))
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n(recall in %)"
