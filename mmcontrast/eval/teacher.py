"""Compute a teacher's embeddings of a training split once, for distillation runs.

A run whose method declares a :class:`~mmcontrast.data.teacher_cache.TeacherRequest`
(``Method.teacher_request``) gets its cache here before training starts: loaded and checked
against the split when it exists, else computed with any model the evaluation suite loads
(``mmcontrast.load_model``) and written in one piece. The format is in
:mod:`mmcontrast.data.teacher_cache`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from mmcontrast.config import Config
from mmcontrast.data.pairs import PairTable, load_pairs
from mmcontrast.data.teacher_cache import (
    TeacherEmbeddings,
    TeacherRequest,
    load_teacher_embeddings,
    save_teacher_embeddings,
    split_captions,
    split_fingerprint,
)
from mmcontrast.eval.adapters.base import load_eval_model
from mmcontrast.eval.embed import embed_images

logger = logging.getLogger("mmcontrast")
DEFAULT_TEACHER_SCALE = 100.0  # CLIP's cap, for a teacher that does not record its own


def compute_teacher_embeddings(
    teacher: str,
    table: PairTable,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> TeacherEmbeddings:
    """``teacher``'s normalised embeddings of every image and distinct caption of ``table``.

    Raises:
        ValueError: The teacher has no text tower, or no image of the split is readable.
    """
    model = load_eval_model(teacher, device)
    if not model.has_text:
        raise ValueError(
            f"teacher {teacher!r} has no text tower: distilling an image-text student needs an "
            "image-text teacher (a CLIP-like model, an mmcontrast dual encoder)"
        )
    embedded = embed_images(model, table, batch_size, num_workers)
    features = F.normalize(embedded.features.float(), dim=-1)
    images = torch.zeros(len(table), features.shape[1])
    readable = torch.zeros(len(table), dtype=torch.bool)
    rows = torch.tensor(embedded.rows, dtype=torch.long)
    images[rows], readable[rows] = features, True
    captions = split_captions(table)
    texts = model.embed_texts(captions, batch_size=max(batch_size, 256))
    scale = model.logit_scale()
    if scale is None:
        logger.warning(
            "teacher %s records no logit scale: its similarities are sharpened by %g",
            teacher, DEFAULT_TEACHER_SCALE,
        )  # fmt: skip
        scale = DEFAULT_TEACHER_SCALE
    return TeacherEmbeddings(
        teacher, images, readable, captions, texts, float(scale), split_fingerprint(table)
    )


def ensure_teacher_embeddings(cfg: Config, request: TeacherRequest) -> Path:
    """The teacher's cache for ``cfg``'s split: checked when it exists, else computed and
    written (logging where). Returns its folder.

    Raises:
        ValueError: An existing cache was made for other data, or is damaged.
    """
    table = load_pairs(cfg.data, request.split, cfg.data.max_train_samples)
    fingerprint = split_fingerprint(table)
    try:
        cached = load_teacher_embeddings(request.folder, fingerprint)
    except FileNotFoundError:
        pass
    else:
        if cached.teacher != request.teacher:
            raise ValueError(
                f"{request.folder} holds the embeddings of teacher {cached.teacher!r}, not "
                f"{request.teacher!r}: point method_args.teacher_cache elsewhere, or delete it"
            )
        logger.info("teacher embeddings: %s (cached)", request.folder)
        return request.folder
    print(  # a step that takes minutes: said on stderr, as the run's other notes
        f"computing the embeddings of teacher {request.teacher} over {len(table)} rows of "
        f"{table.source} (once; kept in {request.folder})",
        file=sys.stderr,
        flush=True,
    )
    embeddings = compute_teacher_embeddings(
        request.teacher, table, cfg.eval.batch_size, cfg.data.num_workers
    )
    save_teacher_embeddings(request.folder, embeddings)
    return request.folder
