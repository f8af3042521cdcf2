"""Image-text contrastive training of a dual encoder with the CLIP or SigLIP loss.

Registered as ``image_text``; ``clip``, its earlier name, still selects it. The loss
(``loss.name``: ``clip``, the default, or ``siglip``) sets the dual encoder's initial logit
scale and bias (``init_logit_scale`` / ``init_logit_bias`` on the loss class).

``model.init_from`` starts from a whole pretrained image-text model instead of two towers: a
transformers CLIPModel, SiglipModel or VisionTextDualEncoderModel, an open_clip model, or an
mmcontrast run or export (``mmcontrast.methods.init_source``): its logit scale and bias are
kept, and the loss defaults to the one it was trained with.

With ``data.hard_negatives`` each pair also brings hard negative captions (NegCLIP: from
``data.hard_negatives_column`` and rule-based swaps of its caption), embedded by the text
tower and given to the ``negclip`` loss as ``negative_features`` [N, M, D] with
``negative_mask`` [N, M]; the run then evaluates the ``swaps`` task too.

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
from mmcontrast.data.hard_negatives import HardNegatives, check_negatives_column
from mmcontrast.data.image_text import (
    ImageTable,
    ImageTextCollator,
    ImageTextDataset,
    SeededSamples,
)
from mmcontrast.data.pairs import PairTable, load_pairs, open_stream
from mmcontrast.data.streaming import StreamedPairs
from mmcontrast.data.transforms import image_transform
from mmcontrast.logs import interactive
from mmcontrast.methods.base import Method
from mmcontrast.methods.init_source import open_init_source
from mmcontrast.models.dual_encoder import DualEncoder, build_dual_encoder
from mmcontrast.models.locations import absolute_source
from mmcontrast.models.tower import resolved_preprocess
from mmcontrast.registry import LOSSES, METHODS

NON_MODEL_KEYS = {"skipped", "ids"}
NEGATIVE_PREFIX = "negative_"  # the hard negatives' tokens and mask (NegCLIP)
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
        if cfg.model.init_from:  # saved with the run: it must find the source from anywhere
            cfg.model.init_from = absolute_source(cfg.model.init_from)
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
        self.hard_negatives = self._hard_negatives()
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

    def _hard_negatives(self) -> HardNegatives | None:
        """NegCLIP's hard negatives from the data settings, checked against the loss."""
        data, loss = self.cfg.data, self.cfg.loss.name
        takes = "negative_features" in self.loss_inputs
        if data.hard_negatives == 0:
            if data.hard_negatives_column is not None:
                raise ValueError(
                    f"data.hard_negatives_column={data.hard_negatives_column!r} is set but "
                    "data.hard_negatives=0: set how many hard negatives each pair gets"
                )
            if takes:
                raise ValueError(
                    f"loss {loss!r} trains with hard negatives: set data.hard_negatives (per "
                    "pair) and data.hard_negatives_column and/or data.hard_negative_swaps"
                )
            return None
        if not takes:
            raise ValueError(
                f"data.hard_negatives={data.hard_negatives} gives each pair hard negative "
                f"captions, but loss {loss!r} does not use them: set loss.name=negclip"
            )
        return HardNegatives(
            data.hard_negatives, data.hard_negatives_column, tuple(data.hard_negative_swaps)
        )

    def trained_model(self) -> DualEncoder:
        return self.model

    def eval_tasks(self) -> tuple[str, ...]:
        return ("retrieval", "swaps") if self.hard_negatives else ("retrieval",)

    def forward(self, batch: dict[str, Any], embed_only: bool = False) -> dict[str, Tensor]:
        out = self.embed_for_loss(batch)
        return out if embed_only else self.loss_from_embeddings(out)

    def embed_for_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Image and text embeddings [B, D], logit scale (and bias) of a batch of pairs."""
        inputs = {
            k: v
            for k, v in batch.items()
            if k not in NON_MODEL_KEYS and not k.startswith(NEGATIVE_PREFIX)
        }
        out = self.model(**inputs)
        # a parameter returned as itself has no autograd node, and DDP's search for unused
        # parameters (from the outputs' nodes) would miss it when gradient caching replays
        out = {k: v.view_as(v) if v.grad_fn is None else v for k, v in out.items()}
        if "ids" in batch:
            out["ids"] = batch["ids"]
        if "negative_mask" in batch:
            out["negative_features"] = self._negative_features(batch, out["text_features"])
            out["negative_mask"] = batch["negative_mask"]
        return out

    def _negative_features(self, batch: dict[str, Any], texts: Tensor) -> Tensor:
        """The text tower's normalised embeddings of the batch's hard negatives, [N, M, D];
        zeros where ``negative_mask`` is false (those are never embedded)."""
        mask = batch["negative_mask"]
        valid = mask.flatten().nonzero().squeeze(1)
        features = texts.new_zeros(mask.numel(), texts.shape[1])
        if len(valid):
            tokens = {
                k[len(NEGATIVE_PREFIX) :]: v.flatten(0, 1)[valid]
                for k, v in batch.items()
                if k.startswith(NEGATIVE_PREFIX) and k != "negative_mask"
            }
            embedded = self.model.get_text_features(**tokens)
            features = features.index_put((valid,), embedded.to(features.dtype))
        return features.view(*mask.shape, texts.shape[1])

    def loss_from_embeddings(self, embeddings: dict[str, Tensor]) -> dict[str, Tensor]:
        loss = self.loss_fn(**{k: v for k, v in embeddings.items() if k in self.loss_inputs})
        return {"loss": loss, "logit_scale": embeddings["logit_scale"].detach()}

    def image_transform(self, train: bool) -> Callable[[Any], Tensor]:
        return image_transform(resolved_preprocess(self.model.vision), self.cfg.data, train=train)

    def train_data(
        self,
    ) -> tuple[SeededSamples | StreamedPairs, Callable[[list[Any]], dict[str, Any]]]:
        collate = ImageTextCollator(self.model.text.tokenizer())
        self.check_eval_split()
        if self.cfg.data.streaming:
            return self._streamed_data(), collate
        return self.pair_dataset(self.train_table()), collate

    def check_eval_split(self) -> None:
        """The evaluation split has the group column the settings name: fail before
        training, not after it."""
        data = self.cfg.data
        if data.eval_split and (self.cfg.eval.at_end or self.cfg.eval.every):
            load_pairs(data, data.eval_split, 1).check_group_column()

    def train_table(self) -> PairTable:
        """The training split's rows, with the columns the settings name checked."""
        data = self.cfg.data
        table = load_pairs(data, data.train_split, data.max_train_samples)
        self.check_columns(table)
        return table

    def pair_dataset(
        self,
        table: PairTable,
        dataset_class: type[ImageTextDataset] = ImageTextDataset,
        **extra: Any,
    ) -> ImageTextDataset:
        """The training dataset of ``table``'s pairs as the settings ask (augmentation,
        cached locked features, several captions per image, ids, hard negatives);
        ``dataset_class`` and ``extra`` keyword arguments for a subclass's own."""
        features, bad = self.locked_features(table)
        return dataset_class(
            table,
            self.image_transform(train=True),
            seed=self.cfg.train.seed,
            vision_features=features,
            bad_rows=bad,
            captions_per_image=self.cfg.data.captions_per_image,
            with_ids=self.uses_ids,
            hard_negatives=self.hard_negatives,
            **extra,
        )

    def check_columns(self, table: PairTable) -> None:
        """The training split has the id and hard-negative columns the settings name."""
        table.check_id_column()
        if self.hard_negatives is not None and self.hard_negatives.column is not None:
            check_negatives_column(table, self.hard_negatives.column)

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
        self.check_columns(table)
        return StreamedPairs(
            table,
            self.image_transform(train=True),
            train.seed,
            data.shuffle_buffer,
            captions_per_image=data.captions_per_image,
            with_ids=self.uses_ids,
            hard_negatives=self.hard_negatives,
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
