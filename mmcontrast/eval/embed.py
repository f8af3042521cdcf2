"""Embedding tables of images and lists of texts with any evaluated model, in batches.

With an ``accelerate.Accelerator`` running several processes, the images are sharded
across processes by a prepared data loader and collected with ``gather_for_metrics``
(which drops the samples padded in to even out the last batches), so every process ends
with all embeddings in table order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from mmcontrast.data.image_text import ImageOnlyDataset, ImageTable, _as_list, image_batches
from mmcontrast.data.workers import ignore_stop_signals
from mmcontrast.eval.adapters.base import EvalModel


@dataclass
class EmbeddedImages:
    features: Tensor  # [N, D] float32 on CPU, as the model returns them (not normalised)
    rows: list[int]  # table row of each embedded image
    skipped: Counter = field(default_factory=Counter)  # unreadable rows, by reason


@torch.no_grad()
def embed_images(
    model: EvalModel,
    table: ImageTable,
    batch_size: int = 64,
    num_workers: int = 0,
    accelerator: Any = None,
) -> EmbeddedImages:
    """Every readable image of ``table`` through the model's own preprocessing.

    Pass the training ``accelerator`` to share the work among its processes.
    """
    if accelerator is not None and accelerator.num_processes > 1:
        return _embed_images_sharded(model, table, batch_size, num_workers, accelerator)
    chunks, rows = [], []
    skipped: Counter = Counter(getattr(table, "skipped", {}))
    transform = model.image_transform()
    for batch_rows, pixels, unreadable in image_batches(table, transform, batch_size, num_workers):
        skipped.update(unreadable.values())
        if pixels is not None:
            chunks.append(model.encode_images(pixels).float().cpu())
            rows += batch_rows
    if not rows:
        raise ValueError(
            f"no readable images in {getattr(table, 'source', 'the data')} "
            f"(skipped: {dict(skipped)})"
        )
    return EmbeddedImages(torch.cat(chunks), rows, skipped)


@torch.no_grad()
def _embed_images_sharded(
    model: EvalModel, table: ImageTable, batch_size: int, num_workers: int, accelerator: Any
) -> EmbeddedImages:
    transform = model.image_transform()
    probe = transform(Image.new("RGB", (32, 32)))[None]
    dim = model.encode_images(probe).shape[1]
    loader = DataLoader(
        ImageOnlyDataset(table, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_as_list,
        worker_init_fn=ignore_stop_signals,  # an evaluation during training goes on
    )
    loader = accelerator.prepare_data_loader(loader, device_placement=False)
    indices: list[Tensor] = []
    readable: list[Tensor] = []
    chunks: list[Tensor] = []
    reasons: dict[int, str] = {}
    for samples in loader:
        good = [x for _, x in samples if isinstance(x, Tensor)]
        ok = torch.tensor([isinstance(x, Tensor) for _, x in samples])
        features = torch.zeros(len(samples), dim)
        if good:
            features[ok] = model.encode_images(torch.stack(good)).float().cpu()
        reasons.update({i: x for i, x in samples if isinstance(x, str)})
        index = torch.tensor([i for i, _ in samples])
        batch = (index, ok, features)
        batch = accelerator.gather_for_metrics(tuple(t.to(accelerator.device) for t in batch))
        for store, tensor in zip((indices, readable, chunks), batch, strict=True):
            store.append(tensor.cpu())
    index, ok, features = torch.cat(indices), torch.cat(readable), torch.cat(chunks)
    order = index.argsort()
    index, ok, features = index[order], ok[order], features[order]
    skipped: Counter = Counter(getattr(table, "skipped", {}))
    from accelerate.utils import gather_object

    merged: dict[int, str] = {}
    for part in gather_object([reasons]):
        merged.update(part)
    skipped.update(merged.values())
    if not bool(ok.any()):
        raise ValueError(f"no readable images in {getattr(table, 'source', 'the data')}")
    return EmbeddedImages(features[ok], index[ok].tolist(), skipped)


@torch.no_grad()
def embed_texts(model: EvalModel, texts: list[str], batch_size: int = 256) -> Tensor:
    """``[len(texts), D]`` float32 text embeddings on CPU."""
    chunks = [
        model.encode_texts(texts[start : start + batch_size]).float().cpu()
        for start in range(0, len(texts), batch_size)
    ]
    if not chunks:
        raise ValueError("no texts to embed")
    return torch.cat(chunks)
