"""The swap test: does an image score its own caption above the same words swapped?

ARO (Yuksekgonul et al. 2023, "When and why vision-language models behave like
bags-of-words, and what to do about it?", https://arxiv.org/abs/2210.01936) asks a model
to pick the true caption of an image against the caption with two parts exchanged
(VG-Relation: "the horse is eating the grass" / "the grass is eating the horse";
VG-Attribution: attributes of two objects exchanged). Contrastive models trained on
image-text pairs often do no better than chance: they read captions as bags of words.
NegCLIP trains with such swaps as hard negatives.

This test runs the same check on any image-caption split, with the rule-based swaps of
:mod:`mmcontrast.data.caption_swaps` (noun, attribute, relation) in place of ARO's
parsed Visual Genome scenes:

* every (image, caption) pair whose caption has a swap is tested against **every** swap
  of it, so nothing is drawn and the result is the same on every run;
* the model wins a swap when cos(image, caption) > cos(image, swap); a **tie** (the two
  within ``TIE_TOLERANCE``) counts **half**. ARO's code counts a tie as a miss (its
  ``argmax`` picks the swapped caption, listed first); half a point makes a model that
  ignores word order, whose two texts embed alike, score exactly the chance level 0.5,
  and the two rules agree whenever scores differ;
* ``swap_acc_KIND``: per pair, the mean over its swaps of that kind; then the mean over
  the pairs that have one. ``swap_acc``: per pair, the mean of its kinds' scores, then
  the mean over all pairs with a swap; that is the expected accuracy against one negative
  drawn as :func:`~mmcontrast.data.caption_swaps.hard_negative` draws it (a kind, then a
  swap of that kind). A kind no caption has gets NaN (``null`` in the JSON).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcontrast.data.caption_swaps import SWAP_KINDS, check_kinds, swaps
from mmcontrast.data.pairs import PairTable
from mmcontrast.eval.adapters.base import EvalModel
from mmcontrast.eval.embed import EmbeddedImages, embed_images, embed_texts
from mmcontrast.eval.report import write_result

logger = logging.getLogger(__name__)

CHANCE = 0.5  # two captions to choose from
TIE_TOLERANCE = 1e-5  # cosine; an order-blind text tower's float32 sums differ by ~1e-7
EXAMPLES = 8  # swaps shown in the result JSON


@dataclass
class SwapSet:
    """The pairs that have swaps and every swap of each (the texts a model embeds)."""

    images: list[int] = field(default_factory=list)  # per pair: row of the image features
    captions: list[str] = field(default_factory=list)  # per pair
    negatives: list[str] = field(default_factory=list)  # every swap
    pair_of: list[int] = field(default_factory=list)  # per swap: its pair
    kind_of: list[str] = field(default_factory=list)  # per swap: its kind
    captions_seen: int = 0  # captions of the split, with a swap or not


def swap_set(captions: Sequence[Sequence[str]], kinds: Sequence[str] = SWAP_KINDS) -> SwapSet:
    """The swaps of the captions of each image (``captions[i]``: the captions of image i)."""
    kinds = check_kinds(kinds)
    found = SwapSet()
    for image, texts in enumerate(captions):
        for caption in texts:
            found.captions_seen += 1
            by_kind = swaps(caption)
            negatives = [(kind, n) for kind in kinds for n in by_kind[kind]]
            if not negatives:
                continue
            pair = len(found.captions)
            found.images.append(image)
            found.captions.append(caption)
            for kind, negative in negatives:
                found.negatives.append(negative)
                found.pair_of.append(pair)
                found.kind_of.append(kind)
    return found


def swap_wins(
    image_features: Tensor,
    caption_features: Tensor,
    negative_features: Tensor,
    found: SwapSet,
    tie_tolerance: float = TIE_TOLERANCE,
) -> Tensor:
    """``[len(found.negatives)]``: 1 where the true caption scores higher, 0.5 on a tie, 0.

    Features are L2-normalised here; scores are cosines of the pair's image with its
    caption and with the swap.
    """
    images = F.normalize(image_features.double(), dim=-1)[torch.tensor(found.images)]
    pair_of = torch.tensor(found.pair_of, dtype=torch.long)
    true = (images * F.normalize(caption_features.double(), dim=-1)).sum(-1)[pair_of]
    false = (images[pair_of] * F.normalize(negative_features.double(), dim=-1)).sum(-1)
    margin = true - false
    return torch.where(margin.abs() <= tie_tolerance, 0.5, (margin > 0).double())


def swap_metrics(
    wins: Tensor, found: SwapSet, kinds: Sequence[str] = SWAP_KINDS
) -> tuple[dict[str, float], dict[str, int]]:
    """Accuracies (``swap_acc``, ``swap_acc_KIND``) and pairs per kind (see the module).

    Returns:
        The metrics, and how many pairs have a swap of each kind (``all``: of any kind).
    """
    pairs = len(found.captions)
    pair_of = torch.tensor(found.pair_of, dtype=torch.long)
    per_kind = torch.full((len(kinds), pairs), float("nan"), dtype=torch.float64)
    for k, kind in enumerate(kinds):
        mask = torch.tensor([x == kind for x in found.kind_of], dtype=torch.bool)
        total = torch.zeros(pairs, dtype=torch.float64).index_add_(0, pair_of[mask], wins[mask])
        count = torch.zeros(pairs, dtype=torch.float64).index_add_(
            0, pair_of[mask], torch.ones(int(mask.sum()), dtype=torch.float64)
        )
        per_kind[k] = total / count  # NaN where the pair has no swap of this kind
    has = ~per_kind.isnan()
    metrics = {"swap_acc": _mean(per_kind.nansum(0) / has.sum(0))}
    counts = {"all": pairs}
    for k, kind in enumerate(kinds):
        metrics[f"swap_acc_{kind}"] = _mean(per_kind[k][has[k]])
        counts[kind] = int(has[k].sum())
    return metrics, counts


def _mean(values: Tensor) -> float:
    return float(values.mean()) if len(values) else float("nan")


def evaluate_swaps(
    model: EvalModel,
    table: PairTable,
    batch_size: int = 128,
    num_workers: int = 0,
    kinds: Sequence[str] = SWAP_KINDS,
    images: EmbeddedImages | None = None,
    output_dir: str | Path | None = None,
    extra: dict[str, Any] | None = None,
    accelerator: Any = None,
) -> dict[str, float]:
    """The swap test on a pair table; with ``output_dir``, also ``swaps.json``.

    Args:
        images: The table's image features if already computed (else embedded here; with
            a multi-process ``accelerator``, in shards).
        extra: Merged into the result JSON (model and data described).
    """
    kinds = check_kinds(kinds)
    if images is None:
        images = embed_images(model, table, batch_size, num_workers, accelerator)
    found = swap_set([table.captions(row) for row in images.rows], kinds)
    if not found.captions:
        logger.warning(
            f"no caption of {table.source or 'the data'} has a swap (English captions with "
            "two noun phrases, two attributes or a relation): the swap test has nothing to score"
        )
        metrics: dict[str, float] = {"swap_acc": float("nan")}
        metrics |= {f"swap_acc_{kind}": float("nan") for kind in kinds}
        counts = {"all": 0, **dict.fromkeys(kinds, 0)}
        wins = torch.zeros(0)
    else:
        texts = embed_texts(model, found.captions + found.negatives, batch_size)
        split = len(found.captions)
        wins = swap_wins(images.features, texts[:split], texts[split:], found)
        metrics, counts = swap_metrics(wins, found, kinds)
    if output_dir is not None:
        details = {
            "data": table.source,
            "num_images": len(images.rows),
            "num_captions": found.captions_seen,
            "num_pairs": counts,
            "num_swaps": {kind: found.kind_of.count(kind) for kind in kinds},
            "chance": CHANCE,
            "ties": f"count half (scores within {TIE_TOLERANCE})",
            "skipped": dict(images.skipped),
            "examples": _examples(found, wins),
        }
        write_result(Path(output_dir), "swaps", metrics, {**details, **(extra or {})})
    return metrics


def _examples(found: SwapSet, wins: Tensor) -> list[dict[str, Any]]:
    """A few swaps spread over the set, with whether the model got each right."""
    if not found.negatives:
        return []
    picks = torch.linspace(0, len(found.negatives) - 1, min(EXAMPLES, len(found.negatives)))
    return [
        {
            "caption": found.captions[found.pair_of[i]],
            "swap": found.negatives[i],
            "kind": found.kind_of[i],
            "score": float(wins[i]),
        }
        for i in picks.round().long().tolist()
    ]
