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
        if cfg.weights:  # a full checkpoint, classifier included
            load_into(self.model, cfg.weights)
        _drop_last_linear(self.model)
        self.size = 224
        with torch.no_grad():
            self.model.eval()
            self.width = int(self(torch.zeros(1, 3, self.size, self.size)).shape[-1])
            self.model.train()

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values).flatten(1)

    def image_preprocess(self) -> ImagePreprocess:
        return ImagePreprocess(size=self.size)


def _drop_last_linear(model: nn.Module) -> None:
    """Replace the classifier's final ``Linear`` by the identity, keeping what precedes it
    (ConvNeXt's LayerNorm, MobileNetV3's pre-logits layer)."""
    for attribute in CLASSIFIER_ATTRIBUTES:
        head = getattr(model, attribute, None)
        if isinstance(head, nn.Linear):
            setattr(model, attribute, nn.Identity())
            return
        if isinstance(head, nn.Sequential):
            linears = [i for i, layer in enumerate(head) if isinstance(layer, nn.Linear)]
            if linears:
                head[linears[-1]] = nn.Identity()
                if isinstance(head[linears[-1] - 1], nn.Dropout):  # dropout before logits only
                    head[linears[-1] - 1] = nn.Identity()
                return
    raise ValueError(f"cannot find the classifier of {type(model).__name__} to remove")


@TOWERS.register("torchvision", "torchvision.models classifiers by name (classifier removed)")
def build_torchvision_tower(cfg: TowerConfig, modality: str) -> TorchvisionTower:
    if modality != "vision":
        raise ValueError("torchvision towers are vision towers")
    return TorchvisionTower(cfg)
