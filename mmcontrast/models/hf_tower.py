"""Towers from Hugging Face transformers: any ``AutoModel`` by Hub id or local directory.

Composite checkpoints (``CLIPModel``, ``SiglipModel``, ``VisionTextDualEncoderModel``) give
their vision or text half, with a warning naming what is dropped (the other half, the
projections, the logit scale: ``model.init_from`` keeps them); encoder-decoder text models
(T5) give their encoder. ``pretrained: false`` builds the model from its config with random
weights; ``name`` may then also be a bare model type (``bert``, ``vit``) with sizes in
``config_overrides``. A model already loaded (a half of the whole ``CLIPModel`` or
``VisionTextDualEncoderModel`` that ``model.init_from`` names) is wrapped as it is.

Images are preprocessed as the checkpoint's image processor says. A timm model through
transformers' ``TimmWrapperModel`` carries timm's data config instead (its
``TimmWrapperImageProcessor``, or ``pretrained_cfg`` in the config when no processor loads,
as in a ``VisionTextDualEncoderModel`` folder): size, mean/std, interpolation and crop mode
are read from it (:func:`mmcontrast.models.timm_tower.timm_preprocess`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForTextEncoding,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    TimmWrapperImageProcessor,
)
from transformers.utils import cached_file

from mmcontrast.config import TowerConfig
from mmcontrast.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess
from mmcontrast.models.packaged import resolve_packaged_path
from mmcontrast.models.timm_tower import timm_preprocess
from mmcontrast.models.tower import Tower, pool
from mmcontrast.models.weights import load_into
from mmcontrast.registry import TOWERS

logger = logging.getLogger(__name__)

# Text towers whose pooled output is the standard sentence feature (EOS / last token).
POOLER_TEXT_TYPES = {"clip_text_model", "siglip_text_model", "siglip2_text_model"}
# Vision models whose config width does not give the pooled feature width.
CONV_TYPES = {"convnext", "resnet", "timm_wrapper"}


def _hub_kwargs(cfg: TowerConfig) -> dict[str, Any]:
    return {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}


def load_hf_config(cfg: TowerConfig, modality: str) -> PretrainedConfig:
    """The tower's config: from its checkpoint, or ``AutoConfig.for_model`` for a bare type.

    A composite checkpoint (``CLIPModel``, ``SiglipModel``, ...) gives its ``vision_config``
    or ``text_config``.
    """
    config = _checkpoint_config(cfg, modality)
    sub = getattr(config, f"{modality}_config", None)
    return sub if sub is not None else config


def _checkpoint_config(cfg: TowerConfig, modality: str) -> PretrainedConfig:
    """The config of the checkpoint ``cfg.name`` names (a composite one whole), overridden."""
    path = resolve_packaged_path(cfg.name)
    if not cfg.pretrained and path in CONFIG_MAPPING and not os.path.isdir(path):
        return AutoConfig.for_model(path, **cfg.config_overrides)
    try:
        config = AutoConfig.from_pretrained(path, **_hub_kwargs(cfg))
    except OSError as err:
        raise ValueError(
            f"cannot load Hugging Face model {cfg.name!r} for the {modality} tower: not a local "
            f"directory with config.json, and not reachable on the Hub ({err.__class__.__name__}). "
            f"Check the name, or build a random tower with pretrained: false and a model type "
            f"such as 'bert' or 'vit'."
        ) from None
    for key, value in cfg.config_overrides.items():
        setattr(config, key, value)
    return config


def _load_composite_half(
    cfg: TowerConfig, modality: str, whole_config: PretrainedConfig, model_cls: Any
) -> Any:
    """The ``{modality}_model`` of a pretrained composite checkpoint, warning what is dropped.

    The whole model is loaded and its half kept (the rest freed), as ``model.init_from``
    does: loaded by its own class, a half whose checkpoint keys carry the composite's prefix
    (a ``VisionTextDualEncoderModel``'s BERT or timm tower) would start random. A half that
    is no transformers model of its own, or an encoder-decoder text half (T5, loaded as its
    encoder), is loaded by its own class.
    """
    path, half = resolve_packaged_path(cfg.name), f"{modality}_model"
    with torch.device("meta"):  # the composite's parts, without weights
        skeleton = AutoModel.from_config(whole_config, trust_remote_code=cfg.trust_remote_code)
    logger.warning(composite_half_message(cfg, modality, skeleton))
    config = getattr(whole_config, f"{modality}_config")
    skeleton_half = getattr(skeleton, half, None)
    if not isinstance(skeleton_half, PreTrainedModel) or model_cls is AutoModelForTextEncoding:
        return model_cls.from_pretrained(path, config=config, **_hub_kwargs(cfg))
    whole = AutoModel.from_pretrained(path, config=whole_config, **_hub_kwargs(cfg))
    return getattr(whole, half)


def composite_half_message(cfg: TowerConfig, modality: str, whole: nn.Module) -> str:
    """What building a tower from one half of the composite model ``whole`` drops."""
    half = f"{modality}_model"
    dropped = [name for name, _ in whole.named_children() if name != half]
    dropped += [name for name, _ in whole.named_parameters(recurse=False)]
    dropped += [name for name, _ in whole.named_buffers(recurse=False)]
    listed = (
        ", ".join(dropped[:-1]) + f" and {dropped[-1]}" if len(dropped) > 1 else "".join(dropped)
    )
    return (
        f"model.{modality}.name ({cfg.name!r}) is a whole {type(whole).__name__}: only its "
        f"{half} is used; {listed or 'nothing else'} {'is' if len(dropped) == 1 else 'are'} "
        "dropped, so the model starts without the source's image-text alignment. To start "
        f"from the whole model (a CLIPModel, SiglipModel or VisionTextDualEncoderModel), set "
        f"model.init_from: {cfg.name} and remove model.vision.name and model.text.name"
    )


def _model_class(config: PretrainedConfig, modality: str) -> Any:
    """``AutoModel``, or the config's own model class when AutoModel has no entry for it.

    transformers 5 maps some tower configs (e.g. ``SiglipTextConfig``) to no AutoModel;
    their class is named after the config (``SiglipTextModel``).
    """
    if modality == "text" and getattr(config, "is_encoder_decoder", False):
        return AutoModelForTextEncoding
    if type(config) in AutoModel._model_mapping:
        return AutoModel
    named = getattr(transformers, type(config).__name__.removesuffix("Config") + "Model", None)
    return named if named is not None else AutoModel


def _build_from_config(model_cls: Any, config: PretrainedConfig, trust_remote_code: bool) -> Any:
    if model_cls in (AutoModel, AutoModelForTextEncoding):
        return model_cls.from_config(config, trust_remote_code=trust_remote_code)
    return model_cls._from_config(config)


class HFTower(Tower):
    """A transformers model plus pooling; the tokenizer or image processor comes from ``name``.

    ``model`` wraps an already loaded transformers model instead of loading ``cfg.name``
    (whose tokenizer and image processor are still used). ``padding`` is how captions are
    padded: ``True`` (to the longest) or ``"max_length"``; None = as the model was trained
    (``"max_length"`` for SigLIP's text models, else ``True``).
    """

    def __init__(
        self,
        cfg: TowerConfig,
        modality: str,
        model: nn.Module | None = None,
        padding: bool | str | None = None,
    ) -> None:
        super().__init__()
        self.modality = modality
        self.cfg = cfg
        self.model: Any = model if model is not None else self._load(cfg, modality)
        if cfg.weights:
            load_into(self.model, cfg.weights)
        self.model_type = str(getattr(self.model.config, "model_type", ""))
        if padding is None:  # SigLIP's text model was trained on captions padded to the length
            padding = "max_length" if self.model_type.startswith("siglip") else True
        self.padding = padding
        self.pooling = cfg.pooling if cfg.pooling != "auto" else self._auto_pooling()
        if self.pooling != "pooler" and isinstance(getattr(self.model, "pooler", None), nn.Module):
            self.model.pooler = None  # unused: keep it out of the optimiser and the checkpoint
        self.width = self._find_width()

    @staticmethod
    def _load(cfg: TowerConfig, modality: str) -> Any:
        whole_config = _checkpoint_config(cfg, modality)
        sub = getattr(whole_config, f"{modality}_config", None)
        config = sub if sub is not None else whole_config
        model_cls = _model_class(config, modality)
        if cfg.pretrained and config is not whole_config:
            return _load_composite_half(cfg, modality, whole_config, model_cls)
        if cfg.pretrained:
            path = resolve_packaged_path(cfg.name)
            return model_cls.from_pretrained(path, config=config, **_hub_kwargs(cfg))
        return _build_from_config(model_cls, config, cfg.trust_remote_code)

    def enable_gradient_checkpointing(self) -> None:
        if not self.model.supports_gradient_checkpointing:
            super().enable_gradient_checkpointing()
        # non-reentrant: works with frozen inputs and keeps the RNG state for dropout
        enable = getattr(self.model, "activation_checkpointing_enable", None)  # transformers 5
        (enable or self.model.gradient_checkpointing_enable)({"use_reentrant": False})

    def _auto_pooling(self) -> str:
        if self.modality == "text":
            return "pooler" if self.model_type in POOLER_TEXT_TYPES else "mean"
        return "pooler" if self._has_pooler() else "mean"

    def _has_pooler(self) -> bool:
        return any(
            getattr(self.model, n, None) is not None for n in ("pooler", "post_layernorm", "head")
        )

    def _find_width(self) -> int:
        config = self.model.config
        if self.pooling == "pooler" and self.model_type in POOLER_TEXT_TYPES:
            # SigLIP's text head projects the pooled token to projection_size
            size = getattr(config, "projection_size", None)
            if isinstance(size, int):
                return size
        if self.model_type not in CONV_TYPES:  # their hidden_size is not the pooled width
            for key in ("hidden_size", "d_model", "num_features"):
                value = getattr(config, key, None)
                if isinstance(value, int):
                    return value
        sizes = getattr(config, "hidden_sizes", None)
        if sizes:
            return int(sizes[-1])
        return int(self._dummy_forward().shape[-1])

    @torch.no_grad()
    def _dummy_forward(self) -> Tensor:
        was_training = self.training
        self.eval()
        if self.modality == "vision":
            size = self.image_preprocess().size
            out = self(pixel_values=torch.zeros(1, 3, size, size))
        else:
            out = self(
                input_ids=torch.ones(1, 4, dtype=torch.long),
                attention_mask=torch.ones(1, 4, dtype=torch.long),
            )
        self.train(was_training)
        return out

    def forward(self, **inputs: Tensor) -> Tensor:
        outputs = self.model(**inputs)
        hidden = getattr(outputs, "last_hidden_state", None)
        pooled = getattr(outputs, "pooler_output", None)
        return pool(self.pooling, hidden, pooled, inputs.get("attention_mask"))

    def image_preprocess(self) -> ImagePreprocess:
        if self.modality != "vision":
            return super().image_preprocess()
        return _image_preprocess(self.cfg, self.model.config)

    def tokenizer(self) -> Callable[[list[str]], dict[str, Tensor]]:
        if self.modality != "text":
            return super().tokenizer()
        return HFTokenizer(self.cfg, accepted_inputs(self.model), self.padding)

    def layer_stack(self) -> nn.ModuleList | nn.Sequential:
        encoder = getattr(self.model, "encoder", None)
        for name in ("layer", "layers", "block", "stages"):
            stack = getattr(encoder, name, None)
            if isinstance(stack, nn.ModuleList | nn.Sequential):
                return stack
        return super().layer_stack()


def accepted_inputs(model: nn.Module) -> tuple[str, ...]:
    """The tokenizer outputs this model's forward accepts."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in params)


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str, revision: str | None, trust_remote_code: bool) -> Any:
    return AutoTokenizer.from_pretrained(
        path, revision=revision, trust_remote_code=trust_remote_code
    )


class HFTokenizer:
    """Picklable ``captions -> {input_ids, attention_mask}`` for a transformers text tower."""

    def __init__(
        self, cfg: TowerConfig, inputs: tuple[str, ...], padding: bool | str = True
    ) -> None:
        self.path = resolve_packaged_path(cfg.tokenizer or cfg.name)
        self.revision = cfg.revision
        self.trust_remote_code = cfg.trust_remote_code
        self.max_length = cfg.max_length
        self.inputs = inputs
        self.padding = padding
        self.tokenizer  # load now so a bad name fails at build time  # noqa: B018

    @property
    def tokenizer(self) -> Any:
        try:
            return load_tokenizer(self.path, self.revision, self.trust_remote_code)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"cannot load a tokenizer from {self.path!r} ({err.__class__.__name__}: {err}). "
                f"Set model.text.tokenizer to a directory or Hub id holding tokenizer files."
            ) from None

    def __call__(self, captions: list[str]) -> dict[str, Tensor]:
        encoded = self.tokenizer(
            captions,
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v for k, v in encoded.items() if k in self.inputs}


def _image_preprocess(cfg: TowerConfig, config: PretrainedConfig) -> ImagePreprocess:
    size = getattr(config, "image_size", None)
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    resizing: dict[str, Any] = {}  # processor_resizing: ImagePreprocess fields
    if cfg.pretrained or os.path.isdir(resolve_packaged_path(cfg.name)):
        try:
            processor = load_image_processor(resolve_packaged_path(cfg.name), config, cfg)
        except (OSError, ValueError, TypeError):
            processor = None
        if isinstance(getattr(processor, "data_config", None), dict):  # timm's, as timm does
            return timm_preprocess(processor.data_config)
        if processor is not None:
            mean = list(getattr(processor, "image_mean", None) or mean)
            std = list(getattr(processor, "image_std", None) or std)
            crop = size_dict(
                getattr(processor, "crop_size", None)
                if getattr(processor, "do_center_crop", False)
                else None
            ) or size_dict(getattr(processor, "size", None))
            size = crop.get("height") or crop.get("shortest_edge") or size
            resizing = processor_resizing(processor)
    elif isinstance(getattr(config, "pretrained_cfg", None), dict):  # a random TimmWrapperModel
        return timm_preprocess(config.pretrained_cfg)
    if isinstance(size, list | tuple):
        size = size[0]
    return ImagePreprocess(size=int(size or 224), mean=mean, std=std, **resizing)


def load_image_processor(path: str, config: PretrainedConfig, cfg: TowerConfig) -> Any:
    """The image processor saved at ``path`` for a vision model with ``config``.

    transformers cannot load the ``TimmWrapperImageProcessor`` that a composite processor
    (``VisionTextDualEncoderProcessor``) saves, nor find one beside a composite config; for
    a ``TimmWrapperModel`` it is rebuilt from the saved processor's data config, else from
    the model config's ``pretrained_cfg``.

    Raises:
        OSError, ValueError, TypeError: No image processor can be read from ``path``.
    """
    try:
        return AutoImageProcessor.from_pretrained(path, **_hub_kwargs(cfg))
    except (OSError, ValueError, TypeError):
        if getattr(config, "model_type", None) != "timm_wrapper":
            raise
    data_config = _saved_timm_data_config(path, cfg) or getattr(config, "pretrained_cfg", None)
    if not isinstance(data_config, dict):
        raise ValueError(f"{path!r}: a timm model without a data config (pretrained_cfg)")
    return TimmWrapperImageProcessor(pretrained_cfg=data_config)


def _saved_timm_data_config(path: str, cfg: TowerConfig) -> dict[str, Any] | None:
    """``processor_config.json``'s timm data config, as a composite processor saves it."""
    try:
        found = cached_file(
            path,
            "processor_config.json",
            revision=cfg.revision,
            _raise_exceptions_for_missing_entries=False,
        )
    except OSError:
        return None
    if found is None:
        return None
    saved = json.loads(Path(found).read_text()).get("image_processor", {})
    data = saved.get("data_config") if isinstance(saved, dict) else None
    return dict(data) if isinstance(data, dict) else None


def size_dict(value: Any) -> dict[str, int]:
    """A processor's ``size`` or ``crop_size``: a dict (PIL backend, older transformers) or a
    ``SizeDict`` dataclass (torchvision backend), as a dict of the keys that are set."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
    return {}


# PIL's resampling codes (transformers' PILImageResampling) -> ImagePreprocess.interpolation;
# torchvision resizes tensors with these three only: the others (lanczos, box, hamming)
# become bicubic, as transformers' torchvision processors do with lanczos
PIL_RESAMPLING = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def processor_resizing(processor: Any) -> dict[str, Any]:
    """How a transformers image processor resizes, as ``ImagePreprocess`` fields.

    Reads ``resample`` (a PIL code, or a torchvision mode in fast processors),
    ``do_center_crop`` and the ``size`` dict: ``shortest_edge`` (resize the shortest side,
    then centre crop ``crop_size``, as CLIP; a crop smaller than the edge is ``crop_pct``) or
    ``height``/``width`` without a crop (squash, as SigLIP).
    Both processor backends (PIL and torchvision) crop at ``margin // 2``.
    """
    out: dict[str, Any] = {"crop_offset": "floor"}
    resample = getattr(processor, "resample", None)
    mode = getattr(resample, "value", resample)  # an enum: PIL's int or torchvision's name
    if isinstance(mode, int):
        out["interpolation"] = PIL_RESAMPLING.get(mode, "bicubic")
    elif isinstance(mode, str):
        out["interpolation"] = mode if mode in PIL_RESAMPLING.values() else "bicubic"
    size = size_dict(getattr(processor, "size", None))
    if size.get("height") and size.get("width") and not getattr(processor, "do_center_crop", False):
        out["resize"] = "squash"
    else:
        out["resize"] = "shortest"
        crop = size_dict(getattr(processor, "crop_size", None)).get("height")
        edge = size.get("shortest_edge")
        if getattr(processor, "do_center_crop", False) and crop and edge and edge != crop:
            out["crop_pct"] = int(crop) / int(edge)  # e.g. 224 cropped from 256: 0.875
    return out


@TOWERS.register("hf", "any transformers AutoModel by Hub id, local directory or package:NAME")
def build_hf_tower(cfg: TowerConfig, modality: str) -> HFTower:
    return HFTower(cfg, modality)
