"""The shared base of the vision recipes: backbone, multi-view data, kNN / linear probe.

A vision method (SimCLR, MoCo, BYOL, SwAV, Barlow Twins, SupCon) is a backbone from any
tower source plus its own heads and loss. This base builds the backbone, reads the
method's ``method_args`` into its dataclass (unknown keys name the nearest valid one),
serves augmented views of a labelled image table, and evaluates frozen backbone features
with weighted kNN and a linear probe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import PartialState
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmcontrast.config import Config, from_dict, to_dict
from mmcontrast.data.batch_views import BatchedViewCollator, BatchedViews, RawSamples
from mmcontrast.data.labelled import LabelledImages, load_labelled
from mmcontrast.data.views import (
    MultiViewCollator,
    MultiViewDataset,
    save_views_png,
    view_transforms,
)
from mmcontrast.eval.knn import knn_metrics
from mmcontrast.eval.linear_probe import linear_probe
from mmcontrast.eval.report import write_result
from mmcontrast.methods.base import Method
from mmcontrast.models.tower import build_tower, resolved_preprocess


class VisionMethod(Method):
    """Base class: subclasses set ``args_class`` and ``loss_name`` and define ``forward``."""

    args_class: ClassVar[type]
    loss_name: ClassVar[str]
    uses_local_views: ClassVar[bool] = False  # multi-crop (SwAV)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.args = from_dict(self.args_class, cfg.method_args, "method_args.")
        cfg.method_args = to_dict(self.args)  # the saved config shows every value used
        if cfg.loss.name not in (None, self.loss_name):
            raise ValueError(
                f"method {cfg.method!r} trains with loss {self.loss_name!r}, not "
                f"{cfg.loss.name!r}; drop loss.name and set its options under loss.kwargs"
            )
        cfg.loss.name = self.loss_name
        if cfg.augment.local_views and not self.uses_local_views:
            raise ValueError(
                f"augment.local_views = {cfg.augment.local_views}: method {cfg.method!r} uses "
                "two views; multi-crop is for swav (set augment.local_views: 0)"
            )
        self.backbone = build_tower(cfg.model.vision, "vision")
        self.steps_done: Tensor
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def lr_prefixes(self) -> dict[str, float]:
        """``model.vision.lr`` applies to the backbone's parameters."""
        lr = self.cfg.model.vision.lr
        return {} if lr is None else {"backbone.": lr}

    def build_loss(self, **defaults: Any) -> nn.Module:
        """The method's loss with the recipe's ``loss.kwargs`` over the method's defaults."""
        return self.make_loss(self.loss_name, **defaults)

    # ----------------------------------------------------------------- training data

    def train_data(self) -> tuple[Dataset, Callable[[list[Any]], dict[str, Any]]]:
        data = self.cfg.data
        if data.streaming:
            raise ValueError(
                f"data.streaming is for image-text training (method clip); method "
                f"{self.cfg.method!r} reads its labelled images as a table: set data.streaming=false"
            )
        table = load_labelled(data, data.train_split, data.max_train_samples)
        if data.eval_split and (self.cfg.eval.at_end or self.cfg.eval.every):
            load_labelled(data, data.eval_split, 1, table.class_names)  # fail now, not later
        pre, seed = resolved_preprocess(self.backbone), self.cfg.train.seed
        dataset: Dataset
        collate: Callable[[list[Any]], dict[str, Any]]
        if self.cfg.augment.batched:
            dataset = RawSamples(table, seed)
            collate = BatchedViewCollator(BatchedViews(pre, self.cfg.augment), seed)
        else:
            dataset = MultiViewDataset(table, view_transforms(pre, self.cfg.augment), seed)
            collate = MultiViewCollator()
        if self.cfg.eval.views_png and PartialState().is_main_process:
            self._save_views(dataset, collate)
        return dataset, collate

    def _save_views(self, dataset: Dataset, collate: Callable[[list[Any]], dict[str, Any]]) -> None:
        batch = collate([dataset[i] for i in range(min(8, len(dataset)))])  # type: ignore[arg-type]
        if "views" not in batch:
            return
        views = batch["views"]
        pre = resolved_preprocess(self.backbone)
        path = Path(self.cfg.train.output_dir) / "views.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_views_png(views, path, pre.mean, pre.std)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.steps_done.fill_(step)

    # ----------------------------------------------------------------- evaluation

    @torch.no_grad()
    def embed(
        self, table: LabelledImages, accelerator: Any = None
    ) -> tuple[Tensor, Tensor, Counter]:
        """Backbone features and labels of every readable image (eval transform)."""
        from mmcontrast.eval.adapters.mmcontrast_run import MmcontrastAdapter
        from mmcontrast.eval.embed import embed_images

        was_training = self.training
        self.eval()
        try:
            device = next(self.backbone.parameters()).device
            embedded = embed_images(
                MmcontrastAdapter("training", device, self),
                table,
                self.cfg.eval.batch_size,
                self.cfg.data.num_workers,
                accelerator,
            )
        finally:
            self.train(was_training)
        labels = table.labels()[torch.tensor(embedded.rows, dtype=torch.long)]
        return embedded.features, labels, embedded.skipped

    def evaluate(
        self,
        output_dir: Path | None = None,
        step: int | None = None,
        extra: dict[str, Any] | None = None,
        accelerator: Any = None,
    ) -> dict[str, float]:
        """Weighted kNN (train split as the bank) and a linear probe on the eval split."""
        data, cfg = self.cfg.data, self.cfg.eval
        if not data.eval_split:
            return {}
        bank_table = load_labelled(data, data.train_split, data.max_train_samples)
        query_table = load_labelled(
            data, data.eval_split, data.max_eval_samples, bank_table.class_names
        )
        bank, bank_labels, _ = self.embed(bank_table, accelerator)
        queries, query_labels, skipped = self.embed(query_table, accelerator)
        results = {
            "knn": knn_metrics(
                bank, bank_labels, queries, query_labels, tuple(cfg.knn_k), cfg.knn_temperature
            )
        }
        if cfg.linear_probe:
            results["linear"] = linear_probe(
                bank, bank_labels, queries, query_labels, num_classes=len(bank_table.class_names)
            )
        if output_dir is not None:
            details = {
                "data": query_table.source,
                "bank": bank_table.source,
                "num_bank": len(bank),
                "num_queries": len(queries),
                "skipped": dict(skipped),
                "step": step,
                "method": self.cfg.method,
                **(extra or {}),
            }
            for task, metrics in results.items():
                write_result(output_dir, task, metrics, details)
        return {k: v for metrics in results.values() for k, v in metrics.items()}
