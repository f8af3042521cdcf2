"""Held-out image-text retrieval: embed a pair table, score it, write JSON and a picture."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcontrast.data.image_text import image_batches
from mmcontrast.data.images import load_image
from mmcontrast.data.pairs import PairTable
from mmcontrast.eval.plots import save_retrieval_grid, topk_texts_to_images
from mmcontrast.eval.retrieval import format_table, retrieval_metrics
from mmcontrast.models.dual_encoder import DualEncoder


@dataclass
class EmbeddedPairs:
    image_features: Tensor  # [Ni, D], L2-normalised
    text_features: Tensor  # [Nt, D], L2-normalised
    text_to_image: Tensor  # [Nt] index into image_features
    captions: list[str]
    rows: list[int]  # table row of each embedded image
    skipped: Counter = field(default_factory=Counter)


@torch.no_grad()
def embed_pairs(
    model: DualEncoder,
    table: PairTable,
    transform: Callable[[Any], Tensor],
    tokenizer: Callable[[list[str]], dict[str, Tensor]],
    batch_size: int = 128,
    num_workers: int = 0,
) -> EmbeddedPairs:
    """Embed every readable image of ``table`` and all of its captions."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    image_chunks, rows, skipped = [], [], Counter(table.skipped)
    for batch_rows, pixels, unreadable in image_batches(table, transform, batch_size, num_workers):
        skipped.update(unreadable.values())
        if pixels is not None:
            image_chunks.append(model.get_image_features(pixels.to(device)).float().cpu())
            rows += batch_rows
    captions, owners = [], []
    for position, row in enumerate(rows):
        for caption in table.captions(row):
            captions.append(caption)
            owners.append(position)
    text_chunks = []
    for start in range(0, len(captions), batch_size):
        tokens = {
            k: v.to(device) for k, v in tokenizer(captions[start : start + batch_size]).items()
        }
        text_chunks.append(model.get_text_features(**tokens).float().cpu())
    model.train(was_training)
    dim = model.embed_dim
    return EmbeddedPairs(
        image_features=torch.cat(image_chunks) if image_chunks else torch.empty(0, dim),
        text_features=torch.cat(text_chunks) if text_chunks else torch.empty(0, dim),
        text_to_image=torch.tensor(owners, dtype=torch.long),
        captions=captions,
        rows=rows,
        skipped=skipped,
    )


def evaluate_retrieval(
    model: DualEncoder,
    table: PairTable,
    transform: Callable[[Any], Tensor],
    tokenizer: Callable[[list[str]], dict[str, Tensor]],
    batch_size: int = 128,
    ks: list[int] | tuple[int, ...] = (1, 5, 10),
    output_dir: str | Path | None = None,
    grid_queries: int = 12,
    extra: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Retrieval metrics (CLIP_benchmark keys); with ``output_dir``, also JSON, table and PNG."""
    embedded = embed_pairs(model, table, transform, tokenizer, batch_size)
    if len(embedded.rows) == 0:
        raise ValueError(
            f"no readable images in the evaluation data {table.source} (skipped: {dict(embedded.skipped)})"
        )
    metrics = retrieval_metrics(
        embedded.image_features, embedded.text_features, embedded.text_to_image, ks=tuple(ks)
    )
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "task": "retrieval",
            "data": table.source,
            "num_images": len(embedded.rows),
            "num_texts": len(embedded.captions),
            "skipped": dict(embedded.skipped),
            "metrics": metrics,
            **(extra or {}),
        }
        (output_dir / "retrieval.json").write_text(json.dumps(record, indent=2))
        (output_dir / "retrieval.txt").write_text(format_table(metrics) + "\n")
        if grid_queries > 0:
            _write_grid(embedded, table, output_dir / "retrieval_grid.png", grid_queries)
    return metrics


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
