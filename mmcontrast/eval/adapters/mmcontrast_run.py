"""mmcontrast runs: a run, checkpoint or export folder (``config.yaml`` + ``model.safetensors``).

The method's :meth:`~mmcontrast.methods.Method.trained_model` is what gets scored: image-text
methods give the dual encoder's projected embeddings; vision recipes give the backbone's
features (what kNN and the linear probe score) and have no text tower.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcontrast.data.transforms import image_transform
from mmcontrast.eval.adapters.base import MODEL_FAMILIES, EvalModel
from mmcontrast.methods import Method, load_trained
from mmcontrast.models.dual_encoder import DualEncoder
from mmcontrast.models.tower import Tower, resolved_preprocess


@MODEL_FAMILIES.register("mmcontrast", "mmcontrast run, checkpoint or export folder (config.yaml)")
class MmcontrastAdapter(EvalModel):
    family = "mmcontrast"

    def __init__(self, spec: str, device: torch.device, method: Method) -> None:
        super().__init__(spec, device)
        self.method = method
        model = method.trained_model()
        if not isinstance(model, DualEncoder | Tower):
            raise TypeError(
                f"method {type(method).__name__}.trained_model() returned a "
                f"{type(model).__name__}: evaluation needs a DualEncoder or a vision Tower"
            )
        self.dual = model if isinstance(model, DualEncoder) else None
        self.image_encoder: Tower = model.vision if isinstance(model, DualEncoder) else model
        self.has_text = self.dual is not None
        self.tokenize = self.dual.text.tokenizer() if self.dual is not None else None

    @classmethod
    def matches(cls, spec: str) -> bool:
        return (Path(spec) / "config.yaml").is_file()

    @classmethod
    def load(cls, spec: str, device: torch.device) -> EvalModel:
        if not cls.matches(spec):
            raise FileNotFoundError(
                f"{spec} holds no config.yaml: pass an mmcontrast run folder or checkpoint folder"
            )
        method = load_trained(spec)
        return cls(spec, device, method.to(device).eval())

    def image_transform(self) -> Callable[[Any], Tensor]:
        return image_transform(resolved_preprocess(self.image_encoder))

    @torch.no_grad()
    def encode_images(self, pixels: Tensor) -> Tensor:
        pixels = pixels.to(self.device)
        if self.dual is not None:
            return self.dual.get_image_features(pixels)
        return self.image_encoder(pixel_values=pixels)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> Tensor:
        if self.dual is None or self.tokenize is None:
            return super().encode_texts(texts)
        tokens = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        return self.dual.get_text_features(**tokens)

    def logit_scale(self) -> float | None:
        if self.dual is None:
            return None
        return float(self.dual.logit_scale.detach().clamp(max=self.dual.max_logit_scale).exp())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "method": self.method.cfg.method}
