"""mmcontrast runs: a run or checkpoint folder (``config.yaml`` + ``model.safetensors``).

Image-text runs give the dual encoder's projected embeddings; vision recipes give the
backbone's features (what kNN and the linear probe score), and have no text tower.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcontrast.eval.adapters.base import MODEL_FAMILIES, EvalModel
from mmcontrast.methods.base import Method


@MODEL_FAMILIES.register("mmcontrast", "mmcontrast run or checkpoint folder (config.yaml)")
class MmcontrastAdapter(EvalModel):
    family = "mmcontrast"

    def __init__(self, spec: str, device: torch.device, method: Method) -> None:
        super().__init__(spec, device)
        from mmcontrast.methods.clip import ImageTextContrastive

        self.method = method
        self.dual = method.model if isinstance(method, ImageTextContrastive) else None
        self.has_text = self.dual is not None
        self.tokenize = self.dual.text.tokenizer() if self.dual is not None else None

    @classmethod
    def matches(cls, spec: str) -> bool:
        return (Path(spec) / "config.yaml").is_file()

    @classmethod
    def load(cls, spec: str, device: torch.device) -> EvalModel:
        from mmcontrast.train.checkpoint import load_trained

        if not cls.matches(spec):
            raise FileNotFoundError(
                f"{spec} holds no config.yaml: pass an mmcontrast run folder or checkpoint folder"
            )
        method = load_trained(spec)
        return cls(spec, device, method.to(device).eval())

    def image_transform(self) -> Callable[[Any], Tensor]:
        from mmcontrast.data.transforms import image_transform
        from mmcontrast.models.tower import resolved_preprocess

        tower = self.dual.vision if self.dual is not None else self.method.backbone
        return image_transform(resolved_preprocess(tower))  # type: ignore[arg-type]

    @torch.no_grad()
    def encode_images(self, pixels: Tensor) -> Tensor:
        pixels = pixels.to(self.device)
        if self.dual is not None:
            return self.dual.get_image_features(pixels)
        return self.method.backbone(pixel_values=pixels)  # type: ignore[operator]

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> Tensor:
        if self.dual is None or self.tokenize is None:
            return super().encode_texts(texts)
        tokens = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        return self.dual.get_text_features(**tokens)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "method": self.method.cfg.method}
