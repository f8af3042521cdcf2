"""Vision backbones from ``torchvision.models`` by name (``source: torchvision``).

``pretrained: true`` without ``weights`` asks torchvision for its default ImageNet
weights (a download); ``weights`` loads a state dict from a file instead. The classifier
is replaced by the identity, so the tower returns the pooled features.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from mmcontrast.config import TowerConfig
from mmcontrast.models.tower import ImagePreprocess, Tower
from mmcontrast.models.weights import load_into
from mmcontrast.registry import TOWERS, unknown_name_message

CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "heads", "head")


class TorchvisionTower(Tower):
    """A ``torchvision.models`` classifier with its last layer removed."""

    modality = "vision"

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        names = torchvision.models.list_models(module=torchvision.models)
        if cfg.name not in names:
            raise ValueError(unknown_name_message("torchvision model", cfg.name, names))
        use_default = cfg.pretrained and cfg.weights is None
        self.model = torchvision.models.get_model(
            cfg.name, weights="DEFAULT" if use_default else None, **cfg.config_overrides
        )
        for attribute in CLASSIFIER_ATTRIBUTES:
            if isinstance(getattr(self.model, attribute, None), nn.Module):
                setattr(self.model, attribute, nn.Identity())
                break
        if cfg.weights:
            load_into(self.model, cfg.weights)
        self.size = 224
        with torch.no_grad():
            self.model.eval()
            self.width = int(self.model(torch.zeros(1, 3, self.size, self.size)).shape[-1])
            self.model.train()

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values)

    def image_preprocess(self) -> ImagePreprocess:
        return ImagePreprocess(size=self.size)


@TOWERS.register("torchvision", "torchvision.models classifiers by name (classifier removed)")
def build_torchvision_tower(cfg: TowerConfig, modality: str) -> TorchvisionTower:
    if modality != "vision":
        raise ValueError("torchvision towers are vision towers")
    return TorchvisionTower(cfg)
