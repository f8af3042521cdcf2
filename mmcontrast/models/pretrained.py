"""Whole pretrained image-text models as the start of training (``model.init_from``).

``init_from`` names one of:

* a transformers ``CLIPModel``, ``SiglipModel`` or ``VisionTextDualEncoderModel`` (a local
  folder or Hub id; an ``mmcontrast export`` folder in one of these classes too), read here
  by :class:`PretrainedSource`;
* an open_clip model, ``open_clip:NAME[:TAG or weights file]``, ``open_clip:hf-hub:ORG/REPO``
  or ``open_clip:local-dir:DIR`` (:mod:`mmcontrast.models.pretrained_open_clip`);
* an mmcontrast run, checkpoint or native export folder (``config.yaml``), rebuilt by
  :mod:`mmcontrast.methods.init_source`, which also picks among the three.

Each becomes a :class:`DualEncoder` whose embeddings at step 0 are the source's own. For
the transformers classes: the vision and text models become the towers, pooled as the
source pools them (CLIP: the post-layernorm CLS token and the EOS token; SigLIP: its
attention-pooling and text heads; a dual encoder: each tower's pooled output, a timm model
through ``TimmWrapperModel`` included); CLIP's and the dual encoder's bias-free projections
become the dual encoder's (SigLIP's heads already project, so the dual encoder's
projections are identities); the logit scale (and SigLIP's bias, or the
``mmcontrast_logit_bias`` an export of a sigmoid-loss run records) carries over; the
tokenizer, its maximum length, how captions are padded and the image preprocessing (size,
normalisation, interpolation, crop or squash: CLIP resizes the shortest side bicubically and
centre-crops, SigLIP squashes to the square; a timm vision tower follows its timm data
config) are read from the same source. Building the towers one by one
(``model.vision.name`` on a CLIPModel folder) keeps the towers only, so fresh projections
lose the zero-shot alignment.

Keys that describe the model (tower names, tokenizer, ``embed_dim``, ``projection``, initial
logit scale and bias) come from the source, and setting them as well is an error
(:func:`check_init_from_keys`, for every kind of source); training options (``lr``,
``lock``, ``unlocked_layers``, ``lora``, ``gradient_checkpointing``, image size and
normalisation overrides, ``max_logit_scale``) still apply.

References: Radford et al. 2021 (CLIP); Zhai et al. 2023, Sigmoid Loss for Language Image
Pre-Training (SigLIP).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig

from mmcontrast.config import ModelConfig, TowerConfig
from mmcontrast.models.dual_encoder import DualEncoder
from mmcontrast.models.hf_tower import HFTower, load_image_processor, load_tokenizer
from mmcontrast.models.tower import apply_training_options

ACCEPTED = (
    "init_from takes a transformers CLIPModel, SiglipModel or VisionTextDualEncoderModel "
    "(folder or Hub id), open_clip:NAME[:TAG or weights file] (or open_clip:hf-hub:ORG/REPO, "
    "open_clip:local-dir:DIR), or an mmcontrast run, checkpoint or export folder"
)


class InitSource(Protocol):
    """What image-text training needs of a whole model named by ``init_from``."""

    name: str

    @property
    def loss(self) -> str:
        """The loss the source was trained with: the default for fine-tuning it."""
        ...

    def dual_encoder(self, cfg: ModelConfig, logit_bias_if_none: float | None) -> DualEncoder:
        """The source as a dual encoder, with the training options of ``cfg``; a
        ``logit_bias_if_none`` bias when the source has none (for the sigmoid loss)."""
        ...


@dataclass(frozen=True)
class SourceFamily:
    """What differs between the kinds of transformers model ``init_from`` accepts."""

    loss: str  # the loss it was trained with: the default for fine-tuning it
    padding: bool | str  # how its captions were padded in training
    projections: tuple[str, str] | None  # (vision, text) projection attributes; None: heads


PROJECTIONS = ("visual_projection", "text_projection")
FAMILIES = {  # by config.json's model_type
    "clip": SourceFamily("clip", True, PROJECTIONS),
    "siglip": SourceFamily("siglip", "max_length", None),
    "vision-text-dual-encoder": SourceFamily("clip", True, PROJECTIONS),
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
            "(lr, lock, unlocked_layers, lora, gradient_checkpointing, image_size, image_mean, "
            "image_std, max_logit_scale) still apply"
        )


def kept_scale_cap(cfg: ModelConfig, source_log_scale: float, weights: bool) -> float:
    """The cap on the logit scale, raised to the source's so that its value is kept.

    A random model's scale is no limit: reloading keeps the cap that training saved.
    """
    return max(cfg.max_logit_scale, source_log_scale) if weights else cfg.max_logit_scale


class PretrainedSource:
    """A whole CLIPModel, SiglipModel or VisionTextDualEncoderModel named by ``init_from``:
    its family, then its model.

    Reading the family needs only ``config.json``, so the method can pick the loss before
    the weights load.

    Raises:
        ValueError: The source cannot be read, or is none of those classes (the message
            lists every kind of source ``init_from`` accepts).
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
                f"folder with config.json or config.yaml, and not reachable on the Hub. "
                f"{ACCEPTED}"
            ) from None
        model_type = str(getattr(self.config, "model_type", ""))
        if model_type not in FAMILIES:
            raise ValueError(
                f"model.init_from: {name!r} is a {model_type or 'unknown'} model, not an "
                f"image-text model (transformers model types {', '.join(FAMILIES)}). {ACCEPTED}"
            )
        if model_type == "siglip" and not self.config.vision_config.vision_use_head:
            raise ValueError(
                f"model.init_from: {name!r} is a SigLIP model whose vision tower has no "
                "pooling head (vision_use_head: false), so it has no image embedding"
            )
        self.family = FAMILIES[model_type]
        # an mmcontrast export of a sigmoid-loss run records the bias its class has no place for
        recorded = getattr(self.config, "mmcontrast_logit_bias", None)
        self.recorded_bias = float(recorded) if isinstance(recorded, int | float) else None

    @property
    def loss(self) -> str:
        return "siglip" if self.recorded_bias is not None else self.family.loss

    def load_model(self, weights: bool = True) -> Any:
        """The transformers model in float32: pretrained, or random from its config."""
        if not weights:
            return AutoModel.from_config(self.config, dtype=torch.float32)
        return AutoModel.from_pretrained(
            self.name, config=self.config, trust_remote_code=False, dtype=torch.float32
        )

    def max_text_length(self) -> int:
        """The tokenizer's ``model_max_length``, at most the text position embeddings."""
        positions = getattr(self.config.text_config, "max_position_embeddings", None)
        limit = getattr(self._tokenizer(), "model_max_length", None)
        if not isinstance(positions, int):
            return limit if isinstance(limit, int) and limit < 100_000 else 512
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
        vision = TowerConfig(source="hf", name=self.name)
        try:
            load_image_processor(self.name, self.config.vision_config, vision)
        except (OSError, ValueError, TypeError) as err:
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
        if bias is not None:
            init_bias: float | None = float(bias.detach().reshape(-1)[0])
        else:
            init_bias = self.recorded_bias if self.recorded_bias is not None else logit_bias_if_none
        dual = DualEncoder(
            vision,
            text,
            embed_dim=int(self.config.projection_dim) if projections else vision.width,
            projection="linear" if projections else "none",
            init_logit_scale=log_scale,
            init_logit_bias=init_bias,
            max_logit_scale=kept_scale_cap(cfg, log_scale, weights),
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
        apply_training_options(tower, cfg, modality, source=self.name)
        return tower
