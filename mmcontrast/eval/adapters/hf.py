"""Shared code for transformers dual encoders loaded with ``AutoModel`` and their processor.

A family is a subclass naming its ``model_types`` (the ``model_type`` in ``config.json``)
and how its tokenizer pads. Images go through the model's own image processor and texts
through its own tokenizer, so embeddings equal what plain transformers computes. The image
processor is read as training reads it (:func:`mmcontrast.models.hf_tower.load_image_processor`):
for a timm vision tower (``TimmWrapperModel``), which ``AutoImageProcessor`` cannot read back
from a dual encoder's folder, it is timm's own evaluation transform rebuilt from the saved
data config.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmcontrast.config import TowerConfig
from mmcontrast.data.images import load_image
from mmcontrast.eval.adapters.base import EvalModel, PerImage, features_of
from mmcontrast.models.hf_tower import load_image_processor
from mmcontrast.models.locations import check_local_name

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@functools.lru_cache(maxsize=64)
def model_type_of(spec: str) -> str | None:
    """The ``model_type`` of a local transformers folder or Hub id (None: not transformers).

    Raises:
        ValueError: ``spec`` looks like a Hub id but is a missing local path
            (:func:`~mmcontrast.models.locations.check_local_name`, refused without going to
            the network), or the Hub cannot give its config.
    """
    folder = Path(spec)
    if folder.is_dir():
        config = folder / "config.json"
        if not config.is_file():
            return None
        return json.loads(config.read_text()).get("model_type")
    if not HUB_ID.match(spec):
        return None
    check_local_name(spec)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(spec).model_type
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not read the config of Hub model {spec!r} (no network, a typo, or a gated "
            f"repo?): {str(err).strip().rstrip('.')}. Download it first and pass the local "
            "folder, or prefix the spec with its family (see `mmcontrast list models`)"
        ) from err


class ProcessorTransform:
    """One image -> ``[3, H, W]`` pixels through a transformers image processor."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, image: Any) -> Tensor:
        image = load_image(image) if not hasattr(image, "convert") else image.convert("RGB")
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


class TransformersDualEncoder(EvalModel):
    """A transformers model with ``get_image_features`` and ``get_text_features``."""

    model_types: ClassVar[tuple[str, ...]]
    padding: ClassVar[bool | str] = True  # SigLIP was trained with "max_length"

    def __init__(
        self, spec: str, device: torch.device, model: Any, processor: Any, tokenizer: Any
    ) -> None:
        super().__init__(spec, device)
        self.model = model.to(device).eval()
        self.processor = processor
        self.tokenizer = tokenizer

    @classmethod
    def matches(cls, spec: str) -> bool:
        return model_type_of(spec) in cls.model_types

    @classmethod
    def load(cls, spec: str, device: torch.device) -> EvalModel:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        check_local_name(spec)
        kind = model_type_of(spec)
        if kind not in cls.model_types:
            raise ValueError(
                f"{spec!r} is a {kind!r} model, not one of {cls.model_types} ({cls.family})"
            )
        config = AutoConfig.from_pretrained(spec)
        try:
            processor = load_image_processor(
                spec, config.vision_config, TowerConfig(source="hf", name=spec)
            )
            tokenizer = AutoTokenizer.from_pretrained(spec)
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(
                f"{spec!r} lacks its image processor or tokenizer files ({err}); save them with "
                "the model (processor.save_pretrained(folder)) so evaluation preprocesses as "
                "training did"
            ) from err
        model = AutoModel.from_pretrained(spec, config=config)
        return cls(spec, device, model, processor, tokenizer)

    def image_transform(self) -> Callable[[Any], Tensor]:
        return PerImage(ProcessorTransform(self.processor))

    @torch.no_grad()
    def encode_images(self, pixels: Tensor) -> Tensor:
        dtype = next(self.model.parameters()).dtype
        out = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype))
        return features_of(out)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> Tensor:
        tokens = self.tokenizer(
            texts,
            padding=self.padding,
            truncation=True,
            max_length=self.max_text_length(),
            return_tensors="pt",
        )
        inputs = {k: v.to(self.device) for k, v in tokens.items() if k in self.text_inputs()}
        return features_of(self.model.get_text_features(**inputs))

    def max_text_length(self) -> int | None:
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and limit < 100_000:
            return limit
        text_config = getattr(self.model.config, "text_config", None)
        return getattr(text_config, "max_position_embeddings", None)

    def text_inputs(self) -> set[str]:
        """The tokenizer outputs ``get_text_features`` accepts (passed on as transformers would)."""
        return set(inspect.signature(self.model.get_text_features).parameters) - {"kwargs"}

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "class": type(self.model).__name__,
            "model_type": self.model.config.model_type,
            "name_or_path": getattr(self.model.config, "_name_or_path", self.spec),
        }
