"""The shared base of the vision recipes: backbone, multi-view data, kNN / linear probe.

A vision method (SimCLR, MoCo, BYOL, SimSiam, SwAV, DINO, Barlow Twins, VICReg, SupCon,
instance discrimination, PIRL) is a backbone from any tower source plus its own heads and
loss. This base builds the backbone, reads the method's ``method_args`` into its dataclass
(unknown keys name the nearest valid one) and serves augmented views of a labelled image
table. Its trained model is the backbone, and its evaluation tasks are weighted kNN and
(``eval.linear_probe``) a linear probe on the backbone's frozen features.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import PartialState
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmcontrast.config import Config, from_dict, to_dict
from mmcontrast.data.batch_views import BatchedViewCollator, BatchedViews, RawSamples
from mmcontrast.data.image_text import SeededSamples
from mmcontrast.data.images import load_image
from mmcontrast.data.labelled import load_labelled
from mmcontrast.data.views import (
    MultiViewCollator,
    MultiViewDataset,
    save_views_png,
    view_transforms,
)
from mmcontrast.methods.base import Method
from mmcontrast.models.tower import Tower, build_tower, resolved_preprocess


class VisionMethod(Method):
    """Base class: subclasses set ``args_class`` and ``loss_name`` and define ``forward``."""

    args_class: ClassVar[type]
    loss_name: ClassVar[str]
    uses_local_views: ClassVar[bool] = False  # multi-crop (SwAV, DINO)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        cfg = self.cfg  # filled in below: the saved config shows every value used
        self.args = from_dict(self.args_class, cfg.method_args, "method_args.")
        cfg.method_args = to_dict(self.args)
        if cfg.loss.name not in (None, self.loss_name):
            raise ValueError(
                f"method {cfg.method!r} trains with loss {self.loss_name!r}, not "
                f"{cfg.loss.name!r}; drop loss.name and set its options under loss.kwargs"
            )
        cfg.loss.name = self.loss_name
        if cfg.augment.local_views and not self.uses_local_views:
            raise ValueError(
                f"augment.local_views = {cfg.augment.local_views}: method {cfg.method!r} uses "
                "two views; multi-crop is for swav and dino (set augment.local_views: 0)"
            )
        if cfg.model.init_from:
            raise ValueError(
                f"model.init_from is for image-text training (method image_text), not "
                f"{cfg.method!r}: start the backbone from model.vision.name instead"
            )
        self.backbone = build_tower(cfg.model.vision, "vision")
        self.steps_done: Tensor
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def trained_model(self) -> Tower:
        return self.backbone

    def eval_tasks(self) -> tuple[str, ...]:
        return ("knn", "linear") if self.cfg.eval.linear_probe else ("knn",)

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
        """``views.png``: the first readable images of the split beside their views."""
        samples = [dataset[i] for i in range(min(8, len(dataset)))]  # type: ignore[arg-type]
        batch = collate(samples)
        if "views" not in batch:
            return
        originals = None
        if isinstance(dataset, SeededSamples):  # both kinds of view dataset
            table = dataset.table
            originals = [
                load_image(table.image(i)) for i, s in enumerate(samples) if "skip" not in s
            ]
        pre = resolved_preprocess(self.backbone)
        path = Path(self.cfg.train.output_dir) / "views.png"
        save_views_png(batch["views"], path, pre.mean, pre.std, originals=originals)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.steps_done.fill_(step)
