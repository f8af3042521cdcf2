"""Image-text contrastive training of a dual encoder with the CLIP or SigLIP loss.

Registered as ``image_text``; ``clip``, its earlier name, still selects it. The loss
(``loss.name``: ``clip``, the default, or ``siglip``) sets the dual encoder's initial logit
scale and bias (``init_logit_scale`` / ``init_logit_bias`` on the loss class).

``model.init_from`` starts from a whole pretrained image-text model instead of two towers: a
transformers CLIPModel, SiglipModel or VisionTextDualEncoderModel, an open_clip model, or an
mmcontrast run or export (``mmcontrast.methods.init_source``): its logit scale and bias are
kept, and the loss defaults to the one it was trained with.

The multi-positive losses (``unicl``, ``siglip_multi``) take each pair's id
(``batch["ids"]``): pairs sharing a value of ``data.id_column``, or the
``data.captions_per_image`` captions of one image, are positives of each other. A loss
without ids would treat them as negatives, so those settings require one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor

from mmcontrast.config import Config
from mmcontrast.data.feature_cache import compute_tower_features
from mmcontrast.data.image_text import (
    ImageTable,
    ImageTextCollator,
    ImageTextDataset,
    SeededSamples,
)
from mmcontrast.data.pairs import load_pairs, open_stream
from mmcontrast.data.streaming import StreamedPairs
from mmcontrast.data.transforms import image_transform
from mmcontrast.logs import interactive
from mmcontrast.methods.base import Method
from mmcontrast.methods.init_source import open_init_source
from mmcontrast.models.dual_encoder import DualEncoder, build_dual_encoder
from mmcontrast.models.tower import resolved_preprocess
from mmcontrast.registry import LOSSES, METHODS

NON_MODEL_KEYS = {"skipped", "ids"}
TEACHER_INPUTS = ("teacher_image_features", "teacher_text_features")  # distillation's


@METHODS.register(
    "image_text",
    "image-text contrastive training of a dual encoder (loss: clip or siglip)",
    aliases=["clip"],
)
class ImageTextContrastive(Method):
    """A dual encoder trained on image-text pairs; ``loss.name`` picks CLIP or SigLIP."""

    reads_teacher: ClassVar[bool] = False  # whether batches carry a teacher's embeddings

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        cfg = self.cfg
        source = open_init_source(cfg.model.init_from) if cfg.model.init_from else None
        cfg.loss.name = cfg.loss.name or (source.loss if source else "clip")
        loss_cls = LOSSES.get(cfg.loss.name)  # an unknown name fails here, with the nearest one
        init_scale = getattr(loss_cls, "init_logit_scale", None)
        if init_scale is None:
            image_text = [n for n in LOSSES if hasattr(LOSSES.get(n), "init_logit_scale")]
            raise ValueError(
                f"method {cfg.method!r} trains with an image-text loss ({', '.join(image_text)}), "
                f"not {cfg.loss.name!r} (that loss belongs to another method; see `mmcontrast "
                "list losses`)"
            )
        # open_clip's --gather-with-grad --local-loss: the same values and gradients as the
        # whole [N, N] matrix, computing only this process's [B, N] rows and columns
        defaults = {"local_loss": True} if cfg.loss.name == "clip" else {}
        self.loss_fn = self.make_loss(cfg.loss.name, **defaults)
        if source is not None:
            self.model = source.dual_encoder(cfg.model, loss_cls.init_logit_bias)
            # saved in config.yaml: the cap the run trained with, raised to the source's scale
            cfg.model.max_logit_scale = self.model.max_logit_scale
        else:
            self.model = build_dual_encoder(cfg.model, init_scale, loss_cls.init_logit_bias)
        self.loss_inputs = set(inspect.signature(self.loss_fn.forward).parameters)
        if "logit_bias" in self.loss_inputs and self.model.logit_bias is None:
            raise ValueError(
                f"loss {cfg.loss.name!r} needs a logit bias: set model.init_logit_bias (e.g. -10)"
            )
        self._check_positives()
        if set(TEACHER_INPUTS) & self.loss_inputs and not self.reads_teacher:
            raise ValueError(
                f"loss {cfg.loss.name!r} distils from a teacher: train it with method: distill "
                "and method_args.teacher"
            )

    @property
    def uses_ids(self) -> bool:
        """Whether the loss takes each pair's id (several positives per row)."""
        return "ids" in self.loss_inputs

    def _check_positives(self) -> None:
        """Shared ids and several captions per image need a loss that takes ids: any other
        would push apart pairs that belong together."""
        data, loss = self.cfg.data, self.cfg.loss.name
        wanted = [
            name
            for name, on in (
                (f"data.id_column={data.id_column!r}", data.id_column is not None),
                (f"data.captions_per_image={data.captions_per_image}", data.captions_per_image > 1),
            )
            if on
        ]
        if wanted and not self.uses_ids:
            multi = "siglip_multi" if loss == "siglip" else "unicl"
            raise ValueError(
                f"{' and '.join(wanted)} puts pairs that belong together in one batch, but "
                f"loss {loss!r} treats every other pair as a negative: set loss.name={multi} "
                "(pairs with equal ids are positives of each other)"
            )

    def trained_model(self) -> DualEncoder:
        return self.model

    def eval_tasks(self) -> tuple[str, ...]:
        return ("retrieval",)

    def forward(self, batch: dict[str, Any], embed_only: bool = False) -> dict[str, Tensor]:
        out = self.embed_for_loss(batch)
        return out if embed_only else self.loss_from_embeddings(out)

    def embed_for_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Image and text embeddings [B, D], logit scale (and bias) of a batch of pairs."""
        inputs = {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}
        out = self.model(**inputs)
        # a parameter returned as itself has no autograd node, and DDP's search for unused
        # parameters (from the outputs' nodes) would miss it when gradient caching replays
        out = {k: v.view_as(v) if v.grad_fn is None else v for k, v in out.items()}
        return {**out, "ids": batch["ids"]} if "ids" in batch else out

    def loss_from_embeddings(self, embeddings: dict[str, Tensor]) -> dict[str, Tensor]:
        loss = self.loss_fn(**{k: v for k, v in embeddings.items() if k in self.loss_inputs})
        return {"loss": loss, "logit_scale": embeddings["logit_scale"].detach()}

    def image_transform(self, train: bool) -> Callable[[Any], Tensor]:
        return image_transform(resolved_preprocess(self.model.vision), self.cfg.data, train=train)

    def train_data(self) -> tuple[SeededSamples | StreamedPairs, ImageTextCollator]:
        collate = ImageTextCollator(self.model.text.tokenizer())
        if self.cfg.data.eval_split and (self.cfg.eval.at_end or self.cfg.eval.every):
            load_pairs(self.cfg.data, self.cfg.data.eval_split, 1)  # fail now, not after training
        if self.cfg.data.streaming:
            return self._streamed_data(), collate
        table = load_pairs(
            self.cfg.data, self.cfg.data.train_split, self.cfg.data.max_train_samples
        )
        table.check_id_column()
        features, bad = self.locked_features(table)
        dataset = ImageTextDataset(
            table,
            self.image_transform(train=True),
            seed=self.cfg.train.seed,
            vision_features=features,
            bad_rows=bad,
            captions_per_image=self.cfg.data.captions_per_image,
            with_ids=self.uses_ids,
        )
        return dataset, collate

    def locked_features(self, table: ImageTable) -> tuple[Tensor | None, dict[int, str] | None]:
        """With ``train.cache_locked_features``: the locked vision tower's features of every
        row of ``table`` (computed once) and its unreadable rows; else ``(None, None)``."""
        if not self.cfg.train.cache_locked_features:
            return None, None
        self._check_cacheable()
        return compute_tower_features(
            self.model.vision,
            self.model.vision.width,
            table,
            self.image_transform(train=False),
            self.cfg.eval.batch_size,
            self.cfg.data.num_workers,
            progress=self.cfg.train.progress_bar and interactive(),  # no bar in a log file
        )

    def _streamed_data(self) -> StreamedPairs:
        data, train = self.cfg.data, self.cfg.train
        if train.cache_locked_features:
            raise ValueError(
                "train.cache_locked_features needs the whole training split at once and cannot "
                "be combined with data.streaming: set train.cache_locked_features=false"
            )
        if data.max_train_samples is not None:
            raise ValueError(
                "data.max_train_samples does not apply to streamed data (data.streaming): "
                "bound the run with train.max_steps"
            )
        table = open_stream(data, data.train_split)
        table.check_id_column()
        return StreamedPairs(
            table,
            self.image_transform(train=True),
            train.seed,
            data.shuffle_buffer,
            captions_per_image=data.captions_per_image,
            with_ids=self.uses_ids,
        )

    def _check_cacheable(self) -> None:
        vision, data = self.cfg.model.vision, self.cfg.data
        if not vision.lock or vision.unlocked_layers or vision.lora is not None:
            raise ValueError(
                "train.cache_locked_features needs a fully locked vision tower (model.vision.lock: true, unlocked_layers: 0, no lora)"
            )
        if data.random_resized_crop or data.horizontal_flip or data.color_jitter:
            raise ValueError(
                "train.cache_locked_features cannot be combined with image augmentation (data.random_resized_crop, horizontal_flip, color_jitter)"
            )
