"""Towers from open_clip: one half of an open_clip model, by config name or config JSON.

``name`` is an open_clip model name (``ViT-B-32``) or a path to a model config JSON;
``weights`` is a pretrained tag (``laion2b_s34b_b79k``) or a checkpoint file. Both towers
already end in open_clip's own projection, so features have the model's ``embed_dim``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
from torch import Tensor, nn

from mmcontrast.config import TowerConfig
from mmcontrast.models.tower import ImagePreprocess, Tower
from mmcontrast.registry import TOWERS, unknown_name_message


def open_clip_model_name(name: str) -> str:
    """Register a config JSON with open_clip if needed and return its model name."""
    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config {name!r} not found")
        open_clip.add_model_config(path)
        return path.stem
    if name not in open_clip.list_models():
        raise ValueError(unknown_name_message("open_clip model", name, open_clip.list_models()))
    return name


class OpenClipTower(Tower):
    """The vision (``model.visual``) or text (``encode_text``) half of an open_clip model."""

    def __init__(self, cfg: TowerConfig, modality: str) -> None:
        super().__init__()
        if cfg.pooling != "auto":
            raise ValueError("open_clip towers pool as their model defines: set pooling: auto")
        self.modality = modality
        self.cfg = cfg
        self.model_name = open_clip_model_name(cfg.name)
        pretrained = cfg.weights if cfg.pretrained else None
        model: Any = open_clip.create_model(
            self.model_name, pretrained=pretrained, **cfg.config_overrides
        )
        self.width = int(open_clip.get_model_config(self.model_name)["embed_dim"])
        if modality == "vision":
            self.model = model.visual
            self.preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}))
        else:
            model.visual = nn.Identity()  # keep only the text half
            self.model = model
            self.context_length = int(getattr(model, "context_length", 77))

    def forward(
        self, pixel_values: Tensor | None = None, input_ids: Tensor | None = None
    ) -> Tensor:
        if self.modality == "vision":
            return self.model(pixel_values)
        return self.model.encode_text(input_ids)

    def image_preprocess(self) -> ImagePreprocess:
        size = self.preprocess_cfg.get("size", 224)
        size = size[0] if isinstance(size, list | tuple) else size
        return ImagePreprocess(
            size=int(size),
            mean=list(self.preprocess_cfg["mean"]),
            std=list(self.preprocess_cfg["std"]),
        )

    def tokenizer(self) -> Callable[[list[str]], dict[str, Tensor]]:
        return OpenClipTokenizer(self.model_name)


class OpenClipTokenizer:
    """Picklable ``captions -> {input_ids}`` with open_clip's tokenizer for a model."""

    def __init__(self, model_name: str) -> None:
        self.tokenize = open_clip.get_tokenizer(model_name)

    def __call__(self, captions: list[str]) -> dict[str, Tensor]:
        return {"input_ids": self.tokenize(captions)}


@TOWERS.register("open_clip", "the vision or text half of an open_clip model (name or config JSON)")
def build_open_clip_tower(cfg: TowerConfig, modality: str) -> OpenClipTower:
    return OpenClipTower(cfg, modality)
