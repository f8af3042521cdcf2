"""open_clip models: ``NAME``, ``NAME:PRETRAINED`` (a tag or a checkpoint file), ``local-dir:DIR``
or ``hf-hub:ORG/REPO``.

The model, its validation preprocessing and its tokenizer all come from open_clip, as in
CLIP_benchmark. ``NAME`` may also be a model config JSON; a bare name without a pretrained
tag gives random weights (useful for tests, announced in the result's ``pretrained``).
``local-dir:`` and ``hf-hub:`` are open_clip's own schemas: a folder or Hub repo holding
``open_clip_config.json`` and weights (as ``mmcontrast.hub.convert.transformers_to_open_clip``
writes them); they bring their weights, so they take no ``:PRETRAINED``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcontrast.eval.adapters.base import MODEL_FAMILIES, EvalModel, PerImage
from mmcontrast.models.open_clip_tower import (
    OPEN_CLIP_SCHEMAS,
    open_clip_folder,
    open_clip_model_name,
    parse_open_clip_spec,
)


@MODEL_FAMILIES.register(
    "open_clip",
    "open_clip model: open_clip:NAME[:PRETRAINED tag or file], local-dir:DIR or hf-hub:ORG/REPO",
)
class OpenClipAdapter(EvalModel):
    family = "open_clip"

    def __init__(
        self, spec: str, device: torch.device, model: Any, preprocess: Any, tokenizer: Any
    ) -> None:
        super().__init__(spec, device)
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name, self.pretrained = parse_open_clip_spec(spec)

    @classmethod
    def matches(cls, spec: str) -> bool:
        import open_clip

        name, _ = parse_open_clip_spec(spec)
        return (
            open_clip_folder(spec) is not None
            or name.startswith(OPEN_CLIP_SCHEMAS)
            or name in open_clip.list_models()
            or (name.endswith(".json") and Path(name).is_file())
        )

    @classmethod
    def load(cls, spec: str, device: torch.device) -> EvalModel:
        import open_clip

        spec = open_clip_folder(spec) or spec  # an export folder: local-dir:DIR
        name, pretrained = parse_open_clip_spec(spec)
        name = open_clip_model_name(name)  # a clear error for a missing folder or offline Hub
        schema = name.startswith(OPEN_CLIP_SCHEMAS)
        if pretrained and not Path(pretrained).is_file():
            tags = open_clip.list_pretrained_tags_by_model(name)
            if pretrained not in tags:
                raise ValueError(
                    f"open_clip model {name!r} has no pretrained tag {pretrained!r} and no such "
                    f"file exists (tags: {', '.join(tags) or 'none'})"
                )
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=pretrained,
                require_pretrained=schema,  # no silent random init when their weights are missing
            )
        except (RuntimeError, OSError) as err:
            raise ValueError(f"could not load open_clip model {spec!r}: {err}") from err
        return cls(spec, device, model, preprocess, open_clip.get_tokenizer(name))

    def image_transform(self) -> Callable[[Any], Tensor]:
        return PerImage(self.preprocess)

    @torch.no_grad()
    def encode_images(self, pixels: Tensor) -> Tensor:
        return self.model.encode_image(pixels.to(self.device))

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "name": self.name, "pretrained": self.pretrained}
