"""Held-out image-text retrieval: embed a pair table, score it, write JSON and a picture.

A split whose caption texts repeat across images caps the recall the tie rule allows
(:func:`~mmcontrast.eval.retrieval.repeated_captions`): the evaluation warns once, and the
result JSON records ``duplicate_captions`` and the ``max_recall`` bounds.

With ``data.group_column`` (``--group-column``), each value of that column (a language)
is also scored among its own rows only, as ``GROUP/metric`` beside the whole split's
metrics (:func:`~mmcontrast.eval.retrieval.grouped_retrieval_metrics`): the split is
embedded once, and each group takes its part of the similarities.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcontrast.data.images import load_image
from mmcontrast.data.pairs import PairTable
from mmcontrast.eval.adapters.base import EvalModel
from mmcontrast.eval.embed import EmbeddedImages, embed_images, embed_texts
from mmcontrast.eval.plots import save_retrieval_grid, topk_texts_to_images
from mmcontrast.eval.report import write_result
from mmcontrast.eval.retrieval import (
    CaptionRepeats,
    format_table,
    grouped_retrieval_metrics,
    repeated_captions,
    retrieval_metrics,
    split_groups,
)

logger = logging.getLogger(__name__)


@dataclass
class EmbeddedPairs:
    image_features: Tensor  # [Ni, D]
    text_features: Tensor  # [Nt, D]
    text_to_image: Tensor  # [Nt] index into image_features
    captions: list[str]
    rows: list[int]  # table row of each embedded image
    skipped: Counter = field(default_factory=Counter)
    groups: list[Hashable | None] | None = None  # group_column value of each image, if set
    merged_rows: int = 0  # rows whose image an earlier row holds: their captions joined it


@torch.no_grad()
def embed_pairs(
    model: EvalModel,
    table: PairTable,
    batch_size: int = 128,
    num_workers: int = 0,
    accelerator: Any = None,
    images: EmbeddedImages | None = None,
) -> EmbeddedPairs:
    """Embed every readable image of ``table`` (unless ``images`` holds them already) and
    all of its captions; with the table's ``group_column``, read each image's group.

    Rows that hold the same image (the same file, or the same bytes) and the same group are
    one gallery image with all their captions, as CLIP_benchmark's datasets list an image
    once: a table with one caption per row would otherwise set an image's copies against
    each other, and its copies tie, which counts against every query."""
    table.check_group_column()  # before the images are embedded
    if images is None:
        images = embed_images(model, table, batch_size, num_workers, accelerator)
    groups = table.group_values(images.rows) if table.group_column is not None else None
    keys = table.image_keys(images.rows)
    first: dict[Hashable, int] = {}  # (image, group) -> its gallery position
    kept: list[int] = []  # positions in `images` of the gallery images
    captions, owners = [], []
    for position, row in enumerate(images.rows):
        group = None if groups is None else groups[position]
        key = None if keys[position] is None else (keys[position], group)
        if key is None or key not in first:
            if key is not None:
                first[key] = len(kept)
            kept.append(position)
        owner = len(kept) - 1 if key is None else first[key]
        for caption in table.captions(row):
            captions.append(caption)
            owners.append(owner)
    if len(kept) < len(images.rows):
        logger.info(
            "%d rows of %s repeat an earlier row's image: scored as one image with all its "
            "captions (%d images)",
            len(images.rows) - len(kept),
            table.source,
            len(kept),
        )
    return EmbeddedPairs(
        image_features=images.features[kept],
        text_features=embed_texts(model, captions, batch_size),
        text_to_image=torch.tensor(owners, dtype=torch.long),
        captions=captions,
        rows=[images.rows[i] for i in kept],
        skipped=images.skipped,
        groups=None if groups is None else [groups[i] for i in kept],
        merged_rows=len(images.rows) - len(kept),
    )


def evaluate_retrieval(
    model: EvalModel,
    table: PairTable,
    batch_size: int = 128,
    ks: Sequence[int] = (1, 5, 10),
    output_dir: str | Path | None = None,
    grid_queries: int = 12,
    extra: dict[str, Any] | None = None,
    num_workers: int = 0,
    max_matrix_elements: int = 2**26,
    accelerator: Any = None,
    images: EmbeddedImages | None = None,
) -> dict[str, float]:
    """Retrieval metrics (CLIP_benchmark keys); with ``output_dir``, also JSON, table and PNG.

    With a multi-process ``accelerator`` the images are embedded in shards (every process
    gets the metrics); pass ``output_dir`` on the main process only. Captions repeated
    across images are announced (main process) with the recall they leave reachable.
    ``images``: the table's image features, when another task computed them already.

    With the table's ``group_column``, each value's rows are also scored among themselves
    (their images and captions only) as ``GROUP/metric``; the result JSON gives each
    group's size under ``groups``. Rows with an empty cell enter the whole split only.
    """
    embedded = embed_pairs(model, table, batch_size, num_workers, accelerator, images)
    repeats = repeated_captions(embedded.captions, embedded.text_to_image, ks)
    if repeats.captions and getattr(accelerator, "is_main_process", True):
        logger.warning(_repeats_message(repeats, len(embedded.captions), table.source))
    metrics = retrieval_metrics(
        embedded.image_features,
        embedded.text_features,
        embedded.text_to_image,
        ks=tuple(ks),
        max_matrix_elements=max_matrix_elements,
    )
    by_group: dict[str, dict[str, float]] = {}
    if embedded.groups is not None:
        by_group = grouped_retrieval_metrics(
            embedded.image_features,
            embedded.text_features,
            embedded.text_to_image,
            embedded.groups,
            ks=tuple(ks),
            max_matrix_elements=max_matrix_elements,
        )
        for name, values in by_group.items():
            metrics.update({f"{name}/{key}": value for key, value in values.items()})
    if output_dir is not None:
        output_dir = Path(output_dir)
        details = {
            "data": table.source,
            "num_images": len(embedded.rows),
            "num_texts": len(embedded.captions),
            "skipped": dict(embedded.skipped),
            "rows_repeating_an_image": embedded.merged_rows,
            "duplicate_captions": repeats.captions,
        }
        if repeats.captions:
            details["max_recall"] = repeats.max_recall
        if embedded.groups is not None:
            details["groups"] = _group_record(embedded, str(table.group_column))
        write_result(output_dir, "retrieval", metrics, {**details, **(extra or {})})
        note = f"\n{_repeats_message(repeats, len(embedded.captions))}" if repeats.captions else ""
        tables = [format_table(metrics) + note]
        tables += [f"{name}:\n{format_table(values)}" for name, values in by_group.items()]
        (output_dir / "retrieval.txt").write_text("\n\n".join(tables) + "\n")
        if grid_queries > 0:
            _write_grid(embedded, table, output_dir / "retrieval_grid.png", grid_queries)
    return metrics


def _group_record(embedded: EmbeddedPairs, column: str) -> dict[str, Any]:
    """The groups' column and sizes, and the images in no group, for the result JSON."""
    assert embedded.groups is not None
    groups = split_groups(embedded.groups, embedded.text_to_image)
    return {
        "column": column,
        "sizes": {g.name: {"num_images": len(g.images), "num_texts": len(g.texts)} for g in groups},
        "ungrouped_images": sum(value is None for value in embedded.groups),
    }


def _repeats_message(repeats: CaptionRepeats, total: int, source: str = "") -> str:
    """What repeated captions mean for the recall, in one sentence."""
    of = f" of {source}" if source else ""
    caps = repeats.max_recall
    bound = "so recall cannot reach 1"
    if caps:
        k = min(int(key.rpartition("@")[2]) for key in caps)
        bound = (
            f"so recall@{k} can reach at most {caps[f'image_retrieval_recall@{k}']:.3f} "
            f"text->image and {caps[f'text_retrieval_recall@{k}']:.3f} image->text"
        )
    return (
        f"{repeats.captions} of {total} captions{of} repeat across images "
        f"({repeats.texts} distinct texts held by several images): identical captions tie, "
        f"and under the pessimistic tie rule a tie counts against the query, {bound}"
    )


def _write_grid(
    embedded: EmbeddedPairs, table: PairTable, path: Path, queries: int, k: int = 5
) -> None:
    count = min(queries, len(embedded.captions))
    # spread the queries over the set rather than taking the first few
    picks = torch.linspace(0, len(embedded.captions) - 1, count).round().long().tolist()
    topk = topk_texts_to_images(
        embedded.image_features, embedded.text_features[picks], k=min(k, len(embedded.rows))
    )
    truth = [int(embedded.text_to_image[i]) for i in picks]
    needed = sorted({int(i) for i in topk.flatten().tolist()} | set(truth))
    images = {i: load_image(table.image(embedded.rows[i])) for i in needed}
    save_retrieval_grid(
        path,
        captions=[embedded.captions[i] for i in picks],
        images=[images[i] for i in needed],
        topk_indices=[[needed.index(int(j)) for j in row] for row in topk.tolist()],
        correct=[needed.index(t) for t in truth],
        k=k,
    )
