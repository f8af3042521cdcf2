"""Vision backbones from ``torchvision.models`` by name (``source: torchvision``).

``pretrained: true`` without ``weights`` asks torchvision for its default ImageNet
weights (a download); ``weights`` loads a state dict from a file instead. The classifier's
last ``Linear`` (and a ``Dropout`` right before it) is replaced by the identity, so the tower
returns the pooled features. What precedes it stays: ConvNeXt's LayerNorm
(``classifier.0``), MobileNetV3's pre-logits layer (``classifier.0``, ``classifier.1``).
The tower records the dotted paths it replaced (``replaced``: ``("fc",)`` for ResNet,
``("classifier.2", "classifier.3")`` for MobileNetV3, ``("heads.head",)`` for ViT,
``("head",)`` for Swin): the backbone export saves them beside the weights, and the model
card's loading code replaces the same modules before ``load_state_dict``.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from mmcontrast.config import TowerConfig
from mmcontrast.data.transforms import ImagePreprocess
from mmcontrast.models.tower import Tower
from mmcontrast.models.weights import load_into
from mmcontrast.registry import TOWERS, unknown_name_message

CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "heads", "head")


class TorchvisionTower(Tower):
    """A ``torchvision.models`` classifier with its last layer removed.

    ``replaced`` holds the dotted paths of the modules now ``nn.Identity()`` (the
    classifier's ``Linear`` last), in ``model``'s namespace.
    """

    modality = "vision"

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.cfg = cfg  # the backbone export reads source and name from it
        names = torchvision.models.list_models(module=torchvision.models)
        if cfg.name not in names:
            raise ValueError(unknown_name_message("torchvision model", cfg.name, names))
        use_default = cfg.pretrained and cfg.weights is None
        self.model = torchvision.models.get_model(
            cfg.name, weights="DEFAULT" if use_default else None, **cfg.config_overrides
        )
        if cfg.weights:  # a full checkpoint, classifier included
            load_into(self.model, cfg.weights)
        self.replaced = replace_classifier(self.model)
        self.size = 224
        with torch.no_grad():
            self.model.eval()
            self.width = int(self(torch.zeros(1, 3, self.size, self.size)).shape[-1])
            self.model.train()

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values).flatten(1)

    def image_preprocess(self) -> ImagePreprocess:
        return ImagePreprocess(size=self.size)


def replace_classifier(model: nn.Module) -> tuple[str, ...]:
    """Replace the classifier's final ``Linear`` by the identity, keeping what precedes it
    (ConvNeXt's LayerNorm, MobileNetV3's pre-logits layer) except a ``Dropout`` right before
    it (a dropout before logits only).

    Returns:
        The dotted paths of the modules replaced, in model order (the ``Linear`` last):
        ``("fc",)``, ``("classifier.2", "classifier.3")``, ``("heads.head",)``, ``("head",)``.

    Raises:
        ValueError: no ``fc``, ``classifier``, ``heads`` or ``head`` ends in a ``Linear``
            (e.g. SqueezeNet, whose classifier is a convolution).
    """
    for attribute in CLASSIFIER_ATTRIBUTES:
        head = getattr(model, attribute, None)
        if isinstance(head, nn.Linear):
            setattr(model, attribute, nn.Identity())
            return (attribute,)
        if isinstance(head, nn.Sequential):
            children = list(head.named_children())
            linears = [i for i, (_, layer) in enumerate(children) if isinstance(layer, nn.Linear)]
            if linears:
                last = linears[-1]
                first = last - 1 if last and isinstance(children[last - 1][1], nn.Dropout) else last
                replaced = [name for name, _ in children[first : last + 1]]
                for name in replaced:
                    setattr(head, name, nn.Identity())
                return tuple(f"{attribute}.{name}" for name in replaced)
    raise ValueError(f"cannot find the classifier of {type(model).__name__} to remove")


@TOWERS.register("torchvision", "torchvision.models classifiers by name (classifier removed)")
def build_torchvision_tower(cfg: TowerConfig, modality: str) -> TorchvisionTower:
    if modality != "vision":
        raise ValueError("torchvision towers are vision towers")
    return TorchvisionTower(cfg)
