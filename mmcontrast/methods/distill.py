"""Distil an image-text student from a teacher's cached embeddings (CLIP-KD, TinyCLIP).

"CLIP-KD: An Empirical Study of CLIP Model Distillation" (Yang et al. 2024,
https://arxiv.org/abs/2307.12732) and TinyCLIP's affinity mimicking (Wu et al. 2023,
https://arxiv.org/abs/2309.12314) train a small dual encoder against a large one: the
student's embeddings are pulled to the teacher's (feature distillation) and its batch
similarity distributions to the teacher's (relational distillation), next to the
ground-truth contrastive loss (``loss.name: clip_kd`` and its weights in ``loss.kwargs``).

The teacher (``method_args.teacher``: anything ``mmcontrast eval --model`` loads) never runs
during training: its embeddings of every image and caption of the training split are
computed once before the first run and cached on disk (``method_args.teacher_cache``, default
``$MMCONTRAST_CACHE/teachers/<digest>``), as MobileCLIP's reinforced datasets store them
(:mod:`mmcontrast.data.teacher_cache`, :mod:`mmcontrast.eval.teacher`). The teacher's image
embeddings are of the image as its own library preprocesses it, without the student's
augmentation.

Everything else is :class:`~mmcontrast.methods.image_text.ImageTextContrastive`: the student's
towers, ``model.init_from``, several captions per image, gradient caching, several processes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from mmcontrast.config import Config
from mmcontrast.data.image_text import (
    ImageTextCollator,
    ImageTextDataset,
    SeededSamples,
    flatten_pairs,
)
from mmcontrast.data.pairs import PairTable
from mmcontrast.data.skips import indexed_skip
from mmcontrast.data.teacher_cache import (
    TeacherEmbeddings,
    TeacherRequest,
    default_cache_folder,
    load_teacher_embeddings,
    split_fingerprint,
)
from mmcontrast.methods.image_text import TEACHER_INPUTS, ImageTextContrastive
from mmcontrast.registry import METHODS

ARGS = ("teacher", "teacher_cache")


@METHODS.register(
    "distill",
    "an image-text student distilled from a teacher's cached embeddings (CLIP-KD, Yang et al. 2024)",
)
class Distill(ImageTextContrastive):
    """Image-text training with a teacher's embeddings as extra targets."""

    reads_teacher = True

    def __init__(self, cfg: Config) -> None:
        _check_args(cfg)
        if cfg.data.streaming:
            raise ValueError(
                "distillation reads the teacher's embeddings of the whole training split: set "
                "data.streaming=false"
            )
        cfg = copy.deepcopy(cfg)
        cfg.loss.name = cfg.loss.name or "clip_kd"
        super().__init__(cfg)
        if not set(TEACHER_INPUTS) & self.loss_inputs:
            raise ValueError(
                f"loss {self.cfg.loss.name!r} does not use the teacher: distillation trains "
                "with loss.name=clip_kd (its feature_weight, relational_weight and task_weight "
                "in loss.kwargs)"
            )
        self.teacher_logit_scale: float | None = None  # from the cache, in train_data()

    @classmethod
    def teacher_request(cls, cfg: Config) -> TeacherRequest:
        _check_args(cfg)
        args, data = cfg.method_args, cfg.data
        folder = args.get("teacher_cache") or default_cache_folder(
            args["teacher"], data.path, data.train_split, data.max_train_samples
        )
        return TeacherRequest(str(args["teacher"]), data.train_split, Path(folder))

    def embed_for_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        inputs = {k: v for k, v in batch.items() if k not in TEACHER_INPUTS}
        out = super().embed_for_loss(inputs)
        return {**out, **{k: batch[k] for k in TEACHER_INPUTS}}

    def loss_from_embeddings(self, embeddings: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.teacher_logit_scale is None:
            raise RuntimeError("the teacher's embeddings are read by train_data(): call it first")
        if "teacher_logit_scale" in self.loss_inputs:
            scale = embeddings["logit_scale"].new_tensor(self.teacher_logit_scale)
            embeddings = {**embeddings, "teacher_logit_scale": scale}
        return super().loss_from_embeddings(embeddings)

    def train_data(self) -> tuple[SeededSamples, Callable[[list[Any]], dict[str, Any]]]:
        self.check_eval_split()
        table = self.train_table()
        teacher = self._teacher(table)
        self.teacher_logit_scale = teacher.logit_scale
        dataset = self.pair_dataset(
            table, TeacherRowsDataset, teacher_readable=teacher.readable.tolist()
        )
        return dataset, TeacherCollator(ImageTextCollator(self.model.text.tokenizer()), teacher)

    def _teacher(self, table: PairTable) -> TeacherEmbeddings:
        request = self.teacher_request(self.cfg)
        try:
            teacher = load_teacher_embeddings(request.folder, split_fingerprint(table))
        except FileNotFoundError:
            raise ValueError(
                f"no embeddings of teacher {request.teacher!r} in {request.folder}: train with "
                "`mmcontrast train` (mmcontrast.pipeline.train), which computes them first"
            ) from None
        feature_weight = float(getattr(self.loss_fn, "feature_weight", 0.0))
        if feature_weight and teacher.dim != self.model.embed_dim:
            raise ValueError(
                f"teacher {request.teacher!r} embeds in {teacher.dim} dimensions and the student "
                f"in {self.model.embed_dim}: feature distillation compares them directly. Set "
                f"model.embed_dim={teacher.dim} (the student's projection heads then map to the "
                "teacher's size), or loss.kwargs.feature_weight=0 (the relational term compares "
                "similarity matrices, of any size)"
            )
        return teacher


class TeacherRowsDataset(ImageTextDataset):
    """:class:`ImageTextDataset` whose pairs also carry their table row (``"row"``), for the
    teacher's image embedding; a row the teacher could not read is skipped."""

    def __init__(self, *args: Any, teacher_readable: list[bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher_readable = teacher_readable

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.teacher_readable[index]:
            return indexed_skip("unreadable by the teacher", self.table.image(index), index)
        sample = super().__getitem__(index)
        for pair in sample.get("group", [sample]):
            pair["row"] = index
        return sample


class TeacherCollator:
    """:class:`ImageTextCollator`'s batch plus the teacher's embeddings of its pairs:
    ``teacher_image_features`` (by row) and ``teacher_text_features`` (by caption)."""

    def __init__(self, collate: ImageTextCollator, teacher: TeacherEmbeddings) -> None:
        self.collate, self.teacher = collate, teacher

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(samples)  # it reads only the keys it knows, not "row"
        good = [p for p in flatten_pairs(samples) if "skip" not in p]
        if good:
            rows = [p["row"] for p in good]
            texts = self.teacher.text_rows([p["caption"] for p in good])
            batch["teacher_image_features"] = self.teacher.images[rows]
            batch["teacher_text_features"] = self.teacher.texts[texts]
        return batch


def _check_args(cfg: Config) -> None:
    unknown = sorted(set(cfg.method_args) - set(ARGS))
    if unknown:
        raise ValueError(f"method_args {unknown} are not distillation's (valid: {', '.join(ARGS)})")
    teacher = cfg.method_args.get("teacher")
    if not isinstance(teacher, str) or not teacher:
        raise ValueError(
            "distillation needs method_args.teacher: a model mmcontrast eval --model loads (a "
            "folder or Hub id of a CLIP-like model, open_clip:NAME:TAG, an mmcontrast export)"
        )
