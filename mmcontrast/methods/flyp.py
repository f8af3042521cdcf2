"""FLYP: fine-tune a zero-shot classifier like it was pretrained (Goyal et al. 2023).

"Finetune like you pretrain: Improved finetuning of zero-shot vision models" (CVPR 2023,
https://arxiv.org/abs/2212.00638): on a labelled image dataset, pair each image with a
prompt of its class name (``"an emoji of {c}."``) and train image and text towers with the
contrastive loss of pretraining, instead of a cross-entropy head on the image tower alone.
The classifier is then the text tower's embedding of the class prompts, evaluated by
zero-shot accuracy with the same templates.

A batch often holds one class several times. Their captions are prompts of the same
class, so treating them as negatives of each other would push apart what should match.
Two answers, chosen by ``loss.name``: ``clip`` (the default) masks those entries
(:class:`mmcontrast.losses.ClipLoss` with ``labels``), every image keeping its own caption
as its one positive and other classes as negatives; ``unicl`` makes every same-class pair a
positive (:class:`mmcontrast.losses.UniClLoss` with the labels as ids, UniCL's image-label
loss).

``method_args``:

* ``templates``: prompt templates with ``{c}`` (default ``["a photo of a {c}."]``);
* ``class_names``: a mapping from label value to the name in prompts (default: the label
  made readable, ``"face-smiling"`` -> ``"face smiling"``).

Data: ``data.path`` with ``data.label_column`` (an imagefolder, a ``datasets`` name, or
``fashion_mnist``); the zero-shot classifier covers the classes of the train and eval
splits together.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mmcontrast.config import Config
from mmcontrast.data.class_prompts import ClassPromptDataset, check_templates
from mmcontrast.data.image_text import ImageTextCollator
from mmcontrast.data.labelled import load_labelled, readable_name
from mmcontrast.methods.base import ZeroShotClasses
from mmcontrast.methods.image_text import ImageTextContrastive
from mmcontrast.registry import METHODS

ARGS = ("templates", "class_names")
DEFAULT_TEMPLATES = ["a photo of a {c}."]


@METHODS.register(
    "flyp",
    "FLYP: zero-shot classifier fine-tuned contrastively on class prompts (Goyal et al. 2023)",
)
class Flyp(ImageTextContrastive):
    """Image-text contrastive fine-tuning on labelled images with class-name prompts."""

    def __init__(self, cfg: Config) -> None:
        unknown = sorted(set(cfg.method_args) - set(ARGS))
        if unknown:
            raise ValueError(f"method_args {unknown} are not FLYP's (valid: {', '.join(ARGS)})")
        if cfg.data.streaming:
            raise ValueError("FLYP reads a labelled split whole: set data.streaming=false")
        super().__init__(cfg)
        if self.cfg.loss.name not in ("clip", "unicl"):
            raise ValueError(
                f"FLYP trains with loss 'clip' (same-class captions masked) or 'unicl' "
                f"(same-class pairs positives), not {self.cfg.loss.name!r}"
                + (
                    " (the loss of the model.init_from source, a SigLIP model): set "
                    "loss.name=clip"
                    if not cfg.loss.name
                    else ": set loss.name=clip"
                )
            )
        args = self.cfg.method_args
        self.templates = check_templates(args.get("templates") or DEFAULT_TEMPLATES)
        names = args.get("class_names") or {}
        if not isinstance(names, dict):
            raise ValueError("method_args.class_names must map label values to names")
        self.names_by_label = {str(k): str(v) for k, v in names.items()}
        self._classes: list[str] | None = None

    def class_labels(self) -> list[str]:
        """Label values of the train and eval splits together, sorted (the class order)."""
        if self._classes is None:
            data = self.cfg.data
            labels = set(self._split_classes(data.train_split))
            if data.eval_split:
                labels.update(self._split_classes(data.eval_split))
            self._classes = sorted(labels)
        return self._classes

    def _split_classes(self, split: str) -> list[str]:
        table = load_labelled(self.cfg.data, split)
        if not table.class_names:
            raise ValueError(
                f"{table.source} has no labels in column {self.cfg.data.label_column!r}: FLYP "
                "needs labelled images (set data.label_column)"
            )
        return [str(name) for name in table.class_names]

    def zero_shot_classes(self) -> ZeroShotClasses:
        labels = self.class_labels()
        names = [self.names_by_label.get(label, readable_name(label)) for label in labels]
        return ZeroShotClasses(labels, names, self.templates)

    def eval_tasks(self) -> tuple[str, ...]:
        return ("zeroshot",)

    def embed_for_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = super().embed_for_loss(inputs)
        return {**out, "labels": batch["labels"], "ids": batch["labels"]}  # the loss takes one

    def train_data(self) -> tuple[ClassPromptDataset, ImageTextCollator]:
        classes = self.zero_shot_classes()
        data, train = self.cfg.data, self.cfg.train
        table = load_labelled(data, data.train_split, data.max_train_samples, classes.labels)
        features, bad = self.locked_features(table)
        dataset = ClassPromptDataset(
            table,
            classes.names,
            classes.templates,
            self.image_transform(train=True),
            seed=train.seed,
            vision_features=features,
            bad_rows=bad,
        )
        return dataset, ImageTextCollator(self.model.text.tokenizer())
