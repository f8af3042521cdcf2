"""The evaluation tasks, each a function of (model, data, options): one registry, five tasks.

* ``retrieval``: image-text retrieval on pairs (CLIP_benchmark's recall@k, plus ranks); with
  ``data.group_column``, also per group of rows (a language) among that group's rows only;
* ``swaps``: does an image score its caption above the caption with words swapped (ARO,
  NegCLIP; :mod:`mmcontrast.eval.swap_test`);
* ``zeroshot``: zero-shot classification from class names and prompt templates;
* ``knn``: weighted kNN on frozen image features (train split as the bank);
* ``linear``: a logistic-regression probe on frozen image features.

Every task returns its metrics and, given an output folder, writes ``TASK.json`` (metrics
plus what was evaluated) and its picture. A task is a function of one :class:`TaskRun` (the
model, the data, the options), which also computes each split's image features once for
all the tasks that need them (``retrieval`` and ``swaps`` share a pair split's).
``mmcontrast eval`` and the evaluation during training (:mod:`mmcontrast.eval.training`)
both run these functions; during training the images are embedded in shards across the
training processes.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mmcontrast.data.labelled import folder_class_labels, load_labelled
from mmcontrast.data.pairs import PairTable, load_pairs
from mmcontrast.eval.adapters.base import EvalModel
from mmcontrast.eval.classification import confusion_matrix
from mmcontrast.eval.data import EvalData
from mmcontrast.eval.embed import EmbeddedImages, embed_images
from mmcontrast.eval.image_text import evaluate_retrieval
from mmcontrast.eval.knn import knn_metrics
from mmcontrast.eval.linear_probe import linear_probe
from mmcontrast.eval.plots import save_confusion_matrix
from mmcontrast.eval.report import write_result
from mmcontrast.eval.swap_test import evaluate_swaps
from mmcontrast.eval.zero_shot import build_zero_shot_classifier, zero_shot_evaluate
from mmcontrast.models.memory_bank import KnnBank
from mmcontrast.registry import Registry

logger = logging.getLogger(__name__)

TASKS = Registry("evaluation task")  # the tasks below register themselves


@dataclass
class EvalOptions:
    """Knobs shared by the tasks (the CLI's flags)."""

    batch_size: int = 64
    num_workers: int = 0
    ks: tuple[int, ...] = (1, 5, 10)  # retrieval recall@k
    templates: str | list[str] | None = None  # zero-shot; None: the data's default
    knn_k: tuple[int, ...] = (20, 200)
    knn_temperature: float = 0.07
    max_samples: int | None = None  # per split, for quick looks
    max_samples_by_split: dict[str, int | None] = field(default_factory=dict)  # over max_samples
    max_matrix_elements: int = 2**26  # similarity entries held at once
    pictures: bool = True
    grid_queries: int = 12  # retrieval picture: queries shown

    def max_rows(self, split: str) -> int | None:
        """Rows of ``split`` to score: its own bound, else ``max_samples``."""
        return self.max_samples_by_split.get(split, self.max_samples)


class LabelledFeatures(NamedTuple):
    features: Tensor  # [N, D]
    labels: Tensor  # [N]
    class_labels: list[str]
    source: str
    skipped: dict[str, int]


@dataclass
class TaskRun:
    """One model on one data source: what every task reads, and the features they share."""

    model: EvalModel
    data: EvalData
    options: EvalOptions = field(default_factory=EvalOptions)
    output_dir: Path | None = None  # None: metrics only, no files
    details: dict[str, Any] = field(default_factory=dict)  # merged into each result JSON
    accelerator: Any = None  # a training accelerator: images embedded in shards
    features: dict[tuple[str, tuple[str, ...] | None], LabelledFeatures] = field(
        default_factory=dict
    )
    pair_features: dict[str, tuple[PairTable, EmbeddedImages]] = field(default_factory=dict)
    knn_bank: KnnBank | None = None  # a training method's memory bank: kNN scores against it

    def memory_bank_and_queries(self, bank: KnnBank) -> tuple[LabelledFeatures, LabelledFeatures]:
        """The method's memory bank as the kNN bank, and the scored split embedded into its
        space by the bank's encoder (computed once per run; the train split is not embedded)."""
        queries = self.labelled_features(
            self.data.split, bank.class_labels, BankQueries(self.model, bank.encoder), "memory bank"
        )
        source = (
            f"{self.data.train_split} split, the method's memory bank ({len(bank.labels)} rows)"
        )
        memory = LabelledFeatures(bank.features, bank.labels, bank.class_labels, source, {})
        return memory, queries

    def pairs(self, split: str) -> tuple[PairTable, EmbeddedImages]:
        """An image-text split and its image features, computed once per run."""
        if split not in self.pair_features:
            options = self.options
            table = load_pairs(self.data.config, split, options.max_rows(split))
            table.check_group_column()  # a missing data.group_column fails before embedding
            images = embed_images(
                self.model, table, options.batch_size, options.num_workers, self.accelerator
            )
            self.pair_features[split] = (table, images)
        return self.pair_features[split]

    def labelled_features(
        self,
        split: str,
        class_labels: list[str] | None,
        model: EvalModel | None = None,
        space: str = "",
    ) -> LabelledFeatures:
        """Image features and labels of a labelled split, computed once per run; by ``model``
        instead of the run's (another embedding space, cached under the name ``space``)."""
        name = f"{space}: {split}" if space else split
        key = (name, tuple(class_labels) if class_labels is not None else None)
        if key not in self.features:
            options = self.options
            table = load_labelled(self.data.config, split, options.max_rows(split), class_labels)
            embedded = embed_images(
                model or self.model, table, options.batch_size, options.num_workers,
                self.accelerator,
            )  # fmt: skip
            self.features[key] = LabelledFeatures(
                embedded.features,
                table.labels()[embedded.rows],
                table.class_names,
                table.source,
                dict(embedded.skipped),
            )
        return self.features[key]

    def bank_and_queries(self) -> tuple[LabelledFeatures, LabelledFeatures]:
        """The train split (kNN bank, probe training) and the scored split, same classes."""
        bank = self.labelled_features(self.data.train_split, self.data.class_labels)
        queries = self.labelled_features(
            self.data.split, self.data.class_labels or bank.class_labels
        )
        return bank, queries

    def write(self, task: str, metrics: dict[str, float], record: dict[str, Any]) -> None:
        if self.output_dir is not None:
            write_result(self.output_dir, task, metrics, {**record, **self.details})


@TASKS.register("retrieval", "image-text retrieval: recall@k both ways, mean/median rank")
def retrieval(run: TaskRun) -> dict[str, float]:
    options = run.options
    table, images = run.pairs(run.data.split)
    return evaluate_retrieval(
        run.model,
        table,
        images=images,
        batch_size=options.batch_size,
        ks=options.ks,
        output_dir=run.output_dir,
        grid_queries=options.grid_queries if options.pictures else 0,
        extra=run.details,
        num_workers=options.num_workers,
        max_matrix_elements=options.max_matrix_elements,
        accelerator=run.accelerator,
    )


@TASKS.register("swaps", "true caption vs the same words swapped (nouns, attributes, relations)")
def swap_test(run: TaskRun) -> dict[str, float]:
    table, images = run.pairs(run.data.split)
    return evaluate_swaps(
        run.model,
        table,
        batch_size=run.options.batch_size,
        images=images,
        output_dir=run.output_dir,
        extra=run.details,
    )


@TASKS.register("zeroshot", "zero-shot classification from class names and prompt templates")
def zeroshot(run: TaskRun) -> dict[str, float]:
    classes = run.data.class_labels
    if classes is None and run.data.class_names is None:  # every class a candidate
        classes = folder_class_labels(run.data.config, [run.data.split, run.data.train_split])
    images = run.labelled_features(run.data.split, classes)
    names = run.data.class_names or images.class_labels
    if len(names) != len(images.class_labels):
        raise ValueError(
            f"{len(names)} class names for {len(images.class_labels)} classes in {images.source}"
        )
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        logger.warning(
            "class names listed more than once: %s. Their classifiers are identical, so the "
            "first copy wins every image of either at top-1, as CLIP_benchmark's argmax "
            "decides; give each class a distinct name to tell them apart",
            ", ".join(map(repr, repeated)),
        )
    templates = run.options.templates or run.data.templates
    classifier = build_zero_shot_classifier(
        run.model.encode_texts, names, templates, batch_size=run.options.batch_size
    )
    metrics, predictions = zero_shot_evaluate(
        images.features,
        images.labels,
        classifier,
        max_matrix_elements=run.options.max_matrix_elements,
    )
    record = {
        "data": images.source,
        "num_images": len(images.labels),
        "num_classes": len(names),
        "class_names": names,
        "templates": templates,
        "skipped": images.skipped,
    }
    run.write("zeroshot", metrics, record)
    if run.output_dir is not None and run.options.pictures:
        matrix = confusion_matrix(predictions, images.labels, len(names))
        save_confusion_matrix(run.output_dir / "zeroshot_confusion.png", matrix, names)
    return metrics


def _probe_record(bank: LabelledFeatures, queries: LabelledFeatures) -> dict[str, Any]:
    return {
        "data": queries.source,
        "bank": bank.source,
        "num_bank": len(bank.labels),
        "num_queries": len(queries.labels),
        "num_classes": len(bank.class_labels),
        "skipped": queries.skipped,
    }


class BankQueries(EvalModel):
    """A model's preprocessing with a memory bank's encoder: queries in the bank's space."""

    family = "memory-bank"
    has_text = False

    def __init__(self, model: EvalModel, encoder: nn.Module) -> None:
        super().__init__(model.spec, model.device)
        self.model, self.encoder = model, encoder

    @classmethod
    def matches(cls, spec: str) -> bool:
        return False

    @classmethod
    def load(cls, spec: str, device: torch.device) -> EvalModel:
        raise TypeError("BankQueries wraps a training method's knn_bank(); it is not loaded")

    def image_transform(self) -> Any:
        return self.model.image_transform()

    @torch.no_grad()
    def encode_images(self, pixels: Tensor) -> Tensor:
        return self.encoder(pixels.to(self.device))


@TASKS.register("knn", "weighted kNN on frozen image features (train split as the bank)")
def knn(run: TaskRun) -> dict[str, float]:
    if run.knn_bank is not None:  # a method's memory bank (instdisc, pirl): its head's space
        bank, queries = run.memory_bank_and_queries(run.knn_bank)
    else:
        bank, queries = run.bank_and_queries()
    metrics = knn_metrics(
        bank.features,
        bank.labels,
        queries.features,
        queries.labels,
        ks=run.options.knn_k,
        temperature=run.options.knn_temperature,
        max_matrix_elements=run.options.max_matrix_elements,
        num_classes=len(bank.class_labels),
    )
    run.write("knn", metrics, _probe_record(bank, queries))
    return metrics


@TASKS.register("linear", "linear probe (logistic regression) on frozen image features")
def linear(run: TaskRun) -> dict[str, float]:
    bank, queries = run.bank_and_queries()
    metrics = linear_probe(
        bank.features,
        bank.labels,
        queries.features,
        queries.labels,
        num_classes=len(bank.class_labels),
    )
    run.write("linear", metrics, _probe_record(bank, queries))
    return metrics
