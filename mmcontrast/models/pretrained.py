"""Whole pretrained image-text models as the start of training (``model.init_from``).

A transformers ``CLIPModel`` or ``SiglipModel`` (a local folder or Hub id) becomes a
:class:`DualEncoder` whose embeddings at step 0 are the source's own: its vision and text
models become the towers, pooled as the source pools them (CLIP: the post-layernorm CLS
token and the EOS token; SigLIP: its attention-pooling and text heads); CLIP's bias-free
projections become the dual encoder's (SigLIP's heads already project, so the dual
encoder's projections are identities); its logit scale (and SigLIP's bias) carry over; the
tokenizer, its maximum length, how captions are padded and the image preprocessing (size,
normalisation, interpolation, crop or squash: CLIP resizes the shortest side bicubically and
centre-crops, SigLIP squashes to the square) are read from the same source. Building the towers one by one (``model.vision.name`` on a CLIPModel
folder) keeps the towers only, so fresh projections lose the zero-shot alignment.

Keys that describe the model (tower names, tokenizer, ``embed_dim``, ``projection``, initial
logit scale and bias) come from the source, and setting them as well is an error; training
options (``lr``, ``lock``, ``unlocked_layers``, ``gradient_checkpointing``, image size and
normalisation overrides, ``max_logit_scale``) still apply.

References: Radford et al. 2021 (CLIP); Zhai et al. 2023, Sigmoid Loss for Language Image
Pre-Training (SigLIP).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PretrainedConfig

from mmcontrast.config import ModelConfig, TowerConfig
from mmcontrast.models.dual_encoder import DualEncoder
from mmcontrast.models.hf_tower import HFTower, load_tokenizer
from mmcontrast.models.tower import apply_training_options


@dataclass(frozen=True)
class SourceFamily:
    """What differs between the kinds of whole model ``init_from`` accepts."""

    loss: str  # the loss it was trained with: the default for fine-tuning it
    padding: bool | str  # how its captions were padded in training
    projections: tuple[str, str] | None  # (vision, text) projection attributes; None: heads


FAMILIES = {  # by config.json's model_type
    "clip": SourceFamily("clip", True, ("visual_projection", "text_projection")),
    "siglip": SourceFamily("siglip", "max_length", None),
}
# keys that init_from sets: giving them too is an error, not silently ignored
MODEL_KEYS = "embed_dim projection projection_hidden_dim init_logit_scale init_logit_bias".split()
TOWER_KEYS = (
    "source name weights revision trust_remote_code config_overrides pooling tokenizer max_length"
).split()


def check_init_from_keys(cfg: ModelConfig) -> None:
    """Refuse model keys that ``init_from`` sets, naming them.

    ``model.{vision,text}.pretrained: false`` on both towers (as ``load_trained`` sets)
    builds the source's architecture with random weights; on one tower only, it is refused.

    Raises:
        ValueError: Any of those keys differs from its default.
    """
    model_default, tower_default = ModelConfig(), TowerConfig()
    conflicts = [
        f"model.{key}" for key in MODEL_KEYS if getattr(cfg, key) != getattr(model_default, key)
    ]
    for modality in ("vision", "text"):
        tower = getattr(cfg, modality)
        conflicts += [
            f"model.{modality}.{key}"
            for key in TOWER_KEYS
            if getattr(tower, key) != getattr(tower_default, key)
        ]
    if cfg.vision.pretrained != cfg.text.pretrained:
        conflicts.append("model.vision.pretrained / model.text.pretrained (differ)")
    if conflicts:
        raise ValueError(
            f"model.init_from ({cfg.init_from!r}) gives the whole model: its towers, tokenizer, "
            f"projections and logit scale. Remove {', '.join(conflicts)}; training options "
            "(lr, lock, unlocked_layers, gradient_checkpointing, image_size, image_mean, "
            "image_std, max_logit_scale) still apply"
        )


class PretrainedSource:
    """A whole CLIPModel or SiglipModel named by ``init_from``: its family, then its model.

    Reading the family needs only ``config.json``, so the method can pick the loss before
    the weights load.

    Raises:
        ValueError: The source cannot be read, or is not a CLIPModel or SiglipModel.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        try:
            self.config: PretrainedConfig = AutoConfig.from_pretrained(
                name, trust_remote_code=False
            )
        except (OSError, ValueError) as err:
            raise ValueError(
                f"model.init_from: cannot read {name!r} ({err.__class__.__name__}): not a local "
                "folder with config.json, and not reachable on the Hub. Give a CLIPModel or "
                "SiglipModel folder or Hub id"
            ) from None
        model_type = str(getattr(self.config, "model_type", ""))
        if model_type not in FAMILIES:
            raise ValueError(
                f"model.init_from: {name!r} is a {model_type or 'unknown'} model, not an "
                "image-text model; init_from takes a CLIPModel or SiglipModel folder or Hub id "
                f"(model types {', '.join(FAMILIES)})"
            )
        if model_type == "siglip" and not self.config.vision_config.vision_use_head:
            raise ValueError(
                f"model.init_from: {name!r} is a SigLIP model whose vision tower has no "
                "pooling head (vision_use_head: false), so it has no image embedding"
            )
        self.family = FAMILIES[model_type]

    def load_model(self, weights: bool = True) -> Any:
        """The transformers model in float32: pretrained, or random from its config."""
        if not weights:
            return AutoModel.from_config(self.config, dtype=torch.float32)
        return AutoModel.from_pretrained(
            self.name, config=self.config, trust_remote_code=False, dtype=torch.float32
        )

    def max_text_length(self) -> int:
        """The tokenizer's ``model_max_length``, at most the text position embeddings."""
        positions = int(self.config.text_config.max_position_embeddings)
        limit = getattr(self._tokenizer(), "model_max_length", None)
        return min(limit, positions) if isinstance(limit, int) else positions

    def _tokenizer(self) -> Any:
        try:
            return load_tokenizer(self.name, None, False)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"model.init_from: {self.name!r} has no tokenizer ({err.__class__.__name__}): "
                "save it with the model (tokenizer.save_pretrained(folder))"
            ) from None

    def _check_image_processor(self) -> None:
        try:
            AutoImageProcessor.from_pretrained(self.name, trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"model.init_from: {self.name!r} has no image processor config "
                f"({err.__class__.__name__}): save it with the model "
                "(image_processor.save_pretrained(folder)) so images are preprocessed as the "
                "model was trained"
            ) from None

    def dual_encoder(self, cfg: ModelConfig, logit_bias_if_none: float | None) -> DualEncoder:
        """The source as a dual encoder, with the training options of ``cfg``.

        ``logit_bias_if_none`` is the bias given when the source has none (a CLIP model
        fine-tuned with the sigmoid loss). Pretrained unless both towers say
        ``pretrained: false``. The cap on the logit scale is raised to the source's scale
        so the source's value is kept (SigLIP's is above ln 100).
        """
        check_init_from_keys(cfg)
        weights = cfg.vision.pretrained
        self._check_image_processor()
        source = self.load_model(weights)
        vision = self._tower(source.vision_model, "vision", cfg.vision)
        text = self._tower(source.text_model, "text", cfg.text)
        log_scale = float(source.logit_scale.detach().reshape(-1)[0])
        bias = getattr(source, "logit_bias", None)
        projections = self.family.projections
        if projections is None and vision.width != text.width:
            raise ValueError(
                f"model.init_from: {self.name!r} embeds images in {vision.width} and texts in "
                f"{text.width} dimensions; they must be equal"
            )
        dual = DualEncoder(
            vision,
            text,
            embed_dim=int(self.config.projection_dim) if projections else vision.width,
            projection="linear" if projections else "none",
            init_logit_scale=log_scale,
            init_logit_bias=float(bias.detach().reshape(-1)[0])
            if bias is not None
            else logit_bias_if_none,
            # a random model's scale is no limit: reloading keeps the cap that training saved
            max_logit_scale=max(cfg.max_logit_scale, log_scale) if weights else cfg.max_logit_scale,
        )
        if projections:
            dual.vision_projection.load_state_dict(getattr(source, projections[0]).state_dict())
            dual.text_projection.load_state_dict(getattr(source, projections[1]).state_dict())
        return dual

    def _tower(self, model: Any, modality: str, user: TowerConfig) -> HFTower:
        cfg = dataclasses.replace(
            user, source="hf", name=self.name, pretrained=True, pooling="pooler"
        )
        if modality == "text":
            cfg.max_length = self.max_text_length()
        tower = HFTower(cfg, modality, model=model, padding=self.family.padding)
        apply_training_options(tower, cfg, modality)
        return tower
