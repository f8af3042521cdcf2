"""Small CPU-friendly vision backbones built in (``source: builtin``).

* ``resnet18_cifar``: ResNet-18 with the 3x3 stride-1 stem and no max-pool used for
  32 px images (He et al. 2016, section 4.2; the SimCLR/solo-learn CIFAR variant).
* ``resnet_small``: one basic block per stage, widths 32-64-128 and a stride-2 stem
  (28 px -> 14 -> 7 -> 4), 0.3M parameters: about 1,000 images/s forward and backward
  at 28 px on two CPU cores.
* ``tiny_cnn``: three conv-BN-ReLU-pool layers, for tests and smoke runs.

All take any input size (global average pooling) and return [B, width] features.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from mmcontrast.config import TowerConfig
from mmcontrast.data.transforms import ImagePreprocess
from mmcontrast.models.tower import Tower
from mmcontrast.models.weights import load_into
from mmcontrast.registry import TOWERS, unknown_name_message


def _stage(in_width: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_width != width:
        downsample = nn.Sequential(
            nn.Conv2d(in_width, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
        )
    layers = [BasicBlock(in_width, width, stride=stride, downsample=downsample)]
    layers += [BasicBlock(width, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def cifar_resnet(
    widths: tuple[int, ...], blocks: tuple[int, ...], stem_stride: int = 1
) -> nn.Sequential:
    """A ResNet of basic blocks with a 3x3 stem, no max-pool, global pooling."""
    stem = nn.Sequential(
        nn.Conv2d(3, widths[0], 3, stride=stem_stride, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    )
    stages, in_width = [], widths[0]
    for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
        stages.append(_stage(in_width, width, count, stride=1 if i == 0 else 2))
        in_width = width
    return nn.Sequential(stem, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def tiny_cnn(widths: tuple[int, ...] = (16, 32, 64)) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_width = 3
    for width in widths:
        layers += [
            nn.Conv2d(in_width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        in_width = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


BACKBONES: dict[str, tuple[Callable[[], nn.Sequential], int]] = {
    "resnet18_cifar": (lambda: cifar_resnet((64, 128, 256, 512), (2, 2, 2, 2)), 512),
    "resnet_small": (lambda: cifar_resnet((32, 64, 128), (1, 1, 1), stem_stride=2), 128),
    "tiny_cnn": (tiny_cnn, 64),
}


class SmallBackbone(Tower):
    """One of :data:`BACKBONES`, randomly initialised (or from ``weights``)."""

    modality = "vision"

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.name not in BACKBONES:
            raise ValueError(unknown_name_message("builtin backbone", cfg.name, list(BACKBONES)))
        build, self.width = BACKBONES[cfg.name]
        self.model = build()
        if cfg.weights:
            load_into(self.model, cfg.weights)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values)

    def image_preprocess(self) -> ImagePreprocess:
        return ImagePreprocess(size=32)

    def layer_stack(self) -> nn.Sequential:
        return self.model


@TOWERS.register("builtin", f"small CPU-friendly backbones: {', '.join(BACKBONES)}")
def build_small_backbone(cfg: TowerConfig, modality: str) -> SmallBackbone:
    if modality != "vision":
        raise ValueError("builtin backbones are vision towers")
    return SmallBackbone(cfg)
