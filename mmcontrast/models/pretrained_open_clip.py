"""A whole open_clip model as the start of image-text training (``model.init_from``).

``init_from: open_clip:SPEC`` where SPEC is what ``mmcontrast eval`` takes after
``open_clip:``: ``NAME`` or ``NAME:TAG`` (an open_clip model name or config JSON, and a
pretrained tag or a weights file), ``hf-hub:ORG/REPO`` or ``local-dir:DIR`` (a Hub repo or
folder with ``open_clip_config.json`` and weights). The model is built once and split into
the two :class:`~mmcontrast.models.open_clip_tower.OpenClipTower` halves: ``model.visual``
and the text encoder (``encode_text``). Both already end in open_clip's own projection, so
the dual encoder's projections are identities and its embeddings at step 0 are open_clip's
``encode_image`` / ``encode_text``, normalised. The logit scale carries over, and the logit
bias of a SigLIP model (a config with ``init_logit_bias``), whose loss default is then
``siglip``; the tokenizer and the image preprocessing (``model.visual.preprocess_cfg``: size,
mean/std, bicubic or bilinear, shortest-side resize and centre crop or squash) are
open_clip's own.

References: Radford et al. 2021 (CLIP); Cherti et al. 2023, Reproducible scaling laws for
contrastive language-image learning (open_clip); Zhai et al. 2023 (SigLIP).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import open_clip

from mmcontrast.config import ModelConfig, TowerConfig
from mmcontrast.models.dual_encoder import DualEncoder
from mmcontrast.models.open_clip_tower import (
    OPEN_CLIP_SCHEMAS,
    OpenClipTower,
    create_open_clip_model,
    open_clip_model_config,
    open_clip_model_name,
    parse_open_clip_spec,
)
from mmcontrast.models.pretrained import check_init_from_keys, kept_scale_cap
from mmcontrast.models.tower import apply_training_options

PREFIX = "open_clip:"


class OpenClipSource:
    """An open_clip model named by ``init_from: open_clip:SPEC``.

    Reading its config (not its weights) gives the loss, so the method can pick it first.

    Raises:
        ValueError: An unknown model name or tag, a missing folder or config, or a Hub repo
            that cannot be reached.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        model_name, weights = parse_open_clip_spec(name.removeprefix(PREFIX))
        try:
            self.model_name = open_clip_model_name(model_name)
            self.config = open_clip_model_config(self.model_name)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"model.init_from: {name!r}: {err}") from None
        if weights and not Path(weights).is_file():
            tags = open_clip.list_pretrained_tags_by_model(self.model_name)
            if weights not in tags:
                raise ValueError(
                    f"model.init_from: open_clip model {self.model_name!r} has no pretrained "
                    f"tag {weights!r} and no such file exists (tags: {', '.join(tags) or 'none'})"
                )
        if weights is None and not self.model_name.startswith(OPEN_CLIP_SCHEMAS):
            raise ValueError(
                f"model.init_from: {name!r} names no weights, so it would start from a random "
                f"model: give open_clip:{self.model_name}:TAG (see open_clip."
                "list_pretrained_tags_by_model) or open_clip:NAME:WEIGHTS_FILE"
            )
        self.weights = weights

    @property
    def loss(self) -> str:
        return "siglip" if self.config.get("init_logit_bias") is not None else "clip"

    def dual_encoder(self, cfg: ModelConfig, logit_bias_if_none: float | None) -> DualEncoder:
        """The open_clip model as a dual encoder, with the training options of ``cfg``.

        Pretrained unless both towers say ``pretrained: false`` (random, from the config);
        the cap on the logit scale is raised to the source's scale so that it is kept.
        """
        check_init_from_keys(cfg)
        weights = cfg.vision.pretrained
        vision_cfg = self._tower_cfg(cfg.vision, weights)
        text_cfg = self._tower_cfg(cfg.text, weights)
        model: Any = create_open_clip_model(vision_cfg)
        log_scale = float(model.logit_scale.detach().reshape(-1)[0])
        bias = getattr(model, "logit_bias", None)
        vision = OpenClipTower(vision_cfg, "vision", model=model)  # first: text drops .visual
        text = OpenClipTower(text_cfg, "text", model=model)
        apply_training_options(vision, vision_cfg, "vision", source=self.name)
        apply_training_options(text, text_cfg, "text", source=self.name)
        return DualEncoder(
            vision,
            text,
            embed_dim=vision.width,
            projection="none",
            init_logit_scale=log_scale,
            init_logit_bias=float(bias.detach().reshape(-1)[0])
            if bias is not None
            else logit_bias_if_none,
            max_logit_scale=kept_scale_cap(cfg, log_scale, weights),
        )

    def _tower_cfg(self, user: TowerConfig, weights: bool) -> TowerConfig:
        return dataclasses.replace(
            user,
            source="open_clip",
            name=self.model_name,
            weights=self.weights,
            pretrained=weights,
            pooling="auto",
            max_length=int(self.config.get("text_cfg", {}).get("context_length", 77)),
        )
