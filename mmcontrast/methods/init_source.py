"""What ``model.init_from`` names, opened as the start of image-text training.

:func:`open_init_source` picks the kind of source from the name: ``open_clip:...`` is an
open_clip model (:mod:`mmcontrast.models.pretrained_open_clip`); a folder with
``config.yaml`` is an mmcontrast run, checkpoint or native export (:class:`RunSource`,
here, since rebuilding a run needs the methods); anything else is a transformers
``CLIPModel``, ``SiglipModel`` or ``VisionTextDualEncoderModel`` folder or Hub id
(:mod:`mmcontrast.models.pretrained`), an ``mmcontrast export`` in one of those classes
included.

A run as a source is its trained dual encoder as it was last saved: its towers,
projections (any kind), logit scale and bias and preprocessing, with LoRA/DoRA adapters
merged into the weights first. Its loss is the default, and the new recipe's training
options (lock, ``lora``, ``lr``, image size and normalisation, ...) apply on top.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from mmcontrast.config import ModelConfig, TowerConfig, load_recipe
from mmcontrast.methods.trained import WEIGHTS_FILE, load_trained, merge_lora
from mmcontrast.models.dual_encoder import DualEncoder
from mmcontrast.models.locations import check_local_name
from mmcontrast.models.open_clip_tower import open_clip_folder
from mmcontrast.models.pretrained import (
    ACCEPTED,
    TOWER_KEYS,
    InitSource,
    PretrainedSource,
    check_init_from_keys,
    kept_scale_cap,
)
from mmcontrast.models.pretrained_open_clip import PREFIX as OPEN_CLIP_PREFIX
from mmcontrast.models.pretrained_open_clip import OpenClipSource
from mmcontrast.models.tower import Tower, apply_training_options, resolved_preprocess
from mmcontrast.registry import LOSSES


def open_init_source(name: str) -> InitSource:
    """The source ``model.init_from`` names (reading only its config, not its weights).

    A name that can only be a local path (:mod:`mmcontrast.models.locations`) and does not
    exist is refused at once, without trying the Hub.

    Raises:
        ValueError: The source cannot be read or is not an image-text model; the message
            names what ``init_from`` accepts.
    """
    if name.startswith(OPEN_CLIP_PREFIX):
        return OpenClipSource(name)
    if (Path(name) / "config.yaml").is_file():
        return RunSource(name)
    folder = open_clip_folder(name)  # an open_clip export: open_clip:local-dir:DIR
    if folder is not None and not (Path(name) / "config.json").is_file():
        return OpenClipSource(OPEN_CLIP_PREFIX + folder)
    try:
        check_local_name(name)
    except ValueError as err:
        raise ValueError(f"model.init_from: cannot read {err}. {ACCEPTED}") from None
    return PretrainedSource(name)


class RunSource:
    """An mmcontrast run, checkpoint or native export folder of an image-text method.

    Raises:
        ValueError: The folder's recipe is not an image-text one (its loss is not CLIP's
            or SigLIP's), or it holds no final weights (``model.safetensors``).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.folder = Path(name)
        recipe = load_recipe(self.folder / "config.yaml")
        loss = recipe.loss.name or "clip"
        if getattr(LOSSES.get(loss), "init_logit_scale", None) is None:
            raise ValueError(
                f"model.init_from: {name!r} is a {recipe.method} run trained with the {loss} "
                f"loss, not an image-text one; image-text training starts from an image-text "
                f"run or export. {ACCEPTED}"
            )
        if not (self.folder / WEIGHTS_FILE).is_file():
            raise ValueError(
                f"model.init_from: {name!r} holds no {WEIGHTS_FILE} (a run writes its final "
                "weights when training ends; for a run still going, give one of its "
                "checkpoints/step-N folders)"
            )
        self._loss = loss

    @property
    def loss(self) -> str:
        return self._loss

    def dual_encoder(self, cfg: ModelConfig, logit_bias_if_none: float | None) -> DualEncoder:
        """The run's dual encoder (adapters merged), with the training options of ``cfg``.

        The run's weights are loaded even when both towers say ``pretrained: false`` (a
        reload, whose own weights replace them): a run has no lighter way to rebuild.
        """
        check_init_from_keys(cfg)
        method = merge_lora(load_trained(self.folder))
        dual = method.trained_model()
        if not isinstance(dual, DualEncoder):
            raise ValueError(
                f"model.init_from: {self.name!r} is a {method.cfg.method} run without a text "
                f"tower. {ACCEPTED}"
            )
        dual.requires_grad_(True)  # the run's locks are its own; this recipe's apply below
        dual.train()
        for modality in ("vision", "text"):
            tower = getattr(dual, modality)
            tower.cfg = _tower_cfg(tower, getattr(cfg, modality))
            apply_training_options(tower, tower.cfg, modality, source=self.name)
        if dual.logit_bias is None and logit_bias_if_none is not None:
            dual.logit_bias = nn.Parameter(torch.tensor([float(logit_bias_if_none)]))
        log_scale = float(dual.logit_scale.detach().clamp(max=dual.max_logit_scale))
        dual.max_logit_scale = kept_scale_cap(cfg, log_scale, weights=True)
        return dual


def _tower_cfg(tower: Tower, user: TowerConfig) -> TowerConfig:
    """The run's tower (what it is, as built, without adapters) under ``user``'s training
    options; the image size and normalisation the run trained with unless ``user`` sets
    them."""
    built = {key: getattr(tower.cfg, key) for key in TOWER_KEYS}
    cfg = dataclasses.replace(user, **built, pretrained=tower.cfg.pretrained)
    if tower.modality == "vision":
        pre = resolved_preprocess(tower)
        cfg.image_size = user.image_size or pre.size
        cfg.image_mean = list(user.image_mean or pre.mean)
        cfg.image_std = list(user.image_std or pre.std)
    return cfg
