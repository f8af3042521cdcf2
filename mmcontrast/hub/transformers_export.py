"""A trained dual encoder as a plain transformers model.

``CLIPModel`` when both towers are CLIP towers, ``SiglipModel`` when both are SigLIP
towers without extra projections, otherwise ``VisionTextDualEncoderModel`` (a timm vision
tower goes through ``TimmWrapperModel``, its config's ``hidden_size`` set to the feature
width). All three take each tower's *pooled output* through a bias-free linear projection
(SigLIP: none), so a recipe exports this way when its towers use ``pooling: pooler`` (the
default for CLIP and SigLIP text towers, and vision towers with a pooler) and
``projection: linear``. Anything else raises :class:`NotExpressible` with the reason.

Every export is verified: the transformers model must give the same normalised embeddings
as mmcontrast on the same inputs before it is returned.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    PretrainedConfig,
    PreTrainedModel,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
    TimmWrapperConfig,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
    VisionTextDualEncoderProcessor,
)

from mmcontrast.models.tower import resolved_preprocess

logger = logging.getLogger(__name__)

TOLERANCE = 1e-5
RECIPE_HINT = (
    "For a transformers-loadable export train with model.projection: linear (none for two "
    "SigLIP towers) and hf towers with pooling: pooler (e.g. instead of mean for a BERT "
    "text tower); timm vision towers always fit"
)


class NotExpressible(ValueError):
    """The trained architecture has no plain-transformers equivalent."""


@dataclass
class TransformersExport:
    model: PreTrainedModel
    processor: Any  # CLIPProcessor | SiglipProcessor | VisionTextDualEncoderProcessor
    kind: str  # "clip" | "siglip" | "vision-text-dual-encoder"
    notes: list[str]


def to_transformers(dual: Any) -> TransformersExport:
    """The transformers model and processor equivalent to ``dual`` (verified), or raise."""
    types = (_model_type(dual.vision), _model_type(dual.text))
    projection = _projection_kind(dual)
    siglip = types == ("siglip_vision_model", "siglip_text_model") and projection == "none"
    problems = [
        *_tower_problems(dual.vision, "vision", allowed=("hf", "timm")),
        *_tower_problems(dual.text, "text", allowed=("hf",)),
    ]
    if projection != "linear" and not siglip:
        problems.insert(
            0,
            f"model.projection is {projection!r}: transformers' dual encoders project each "
            "tower with one bias-free linear layer",
        )
    if problems:
        raise NotExpressible(f"{'; '.join(problems)}. {RECIPE_HINT}")
    notes: list[str] = []
    if siglip:
        model: PreTrainedModel = _siglip(dual)
        kind = "siglip"
    else:
        if types == ("clip_vision_model", "clip_text_model"):
            model, kind = _clip(dual), "clip"
        else:
            model, kind = _dual_encoder(dual), "vision-text-dual-encoder"
        if dual.logit_bias is not None:
            notes.append(
                f"the logit bias ({float(dual.logit_bias):.4f}, sigmoid loss) has no place in "
                f"{type(model).__name__}; embeddings and logit scale are exported, the bias is "
                "recorded in config.json as mmcontrast_logit_bias"
            )
            model.config.mmcontrast_logit_bias = float(dual.logit_bias)
    processor = _processor(dual, kind)
    notes += processor_differences(dual.vision)
    _verify(dual, model, processor)
    return TransformersExport(model=model, processor=processor, kind=kind, notes=notes)


# --------------------------------------------------------------------------- checks


def _tower_problems(tower: Any, modality: str, allowed: tuple[str, ...]) -> list[str]:
    source = tower.cfg.source
    if source not in allowed:
        extra = (
            " (open_clip models convert with `mmcontrast convert`)" if source == "open_clip" else ""
        )
        return [
            f"the {modality} tower comes from {source!r}; transformers' dual encoders take "
            f"{' or '.join(allowed)} {modality} towers{extra}"
        ]
    problems = []
    pooling = getattr(tower, "pooling", "auto")
    if source == "hf" and pooling != "pooler":
        problems.append(
            f"the {modality} tower pools with {pooling!r}; transformers' dual encoders use the "
            "tower's pooled output"
        )
    if tower.cfg.trust_remote_code:
        problems.append(
            f"the {modality} tower needs trust_remote_code; its code is not part of transformers"
        )
    return problems


def _model_type(tower: Any) -> str:
    return str(getattr(tower, "model_type", "")) if tower.cfg.source == "hf" else "timm"


def _projection_kind(dual: Any) -> str:
    def kind(module: nn.Module) -> str:
        if isinstance(module, nn.Identity):
            return "none"
        if isinstance(module, nn.Linear) and module.bias is None:
            return "linear"
        return "mlp"

    kinds = {kind(dual.vision_projection), kind(dual.text_projection)}
    return kinds.pop() if len(kinds) == 1 else "mlp"


def _logit_scale(dual: Any) -> Tensor:
    """The capped log scale, 0-dim (CLIPModel's shape; SigLIP's export reshapes it to [1])."""
    return dual.logit_scale.detach().clamp(max=dual.max_logit_scale).reshape(()).clone()


def _tower_state(tower: Any, prefix: str) -> dict[str, Tensor]:
    """The tower's weights under ``prefix`` (a prefix they already carry is not doubled)."""
    state = tower.model.state_dict()
    return {prefix + k.removeprefix(prefix): v for k, v in state.items()}


def _projected_state(dual: Any, vision_prefix: str) -> dict[str, Tensor]:
    """Towers, linear projections and logit scale under CLIPModel's / VTDE's names."""
    return {
        **_tower_state(dual.vision, vision_prefix),
        **_tower_state(dual.text, "text_model."),
        "visual_projection.weight": dual.vision_projection.weight.detach(),
        "text_projection.weight": dual.text_projection.weight.detach(),
        "logit_scale": _logit_scale(dual),
    }


def _load(model: PreTrainedModel, state: dict[str, Tensor], kind: str) -> PreTrainedModel:
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise NotExpressible(
            f"the towers' weights do not map onto {kind}: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    return model.eval()


# --------------------------------------------------------------------------- models


def _clip(dual: Any) -> PreTrainedModel:
    config = CLIPConfig(
        text_config=dual.text.model.config.to_dict(),
        vision_config=dual.vision.model.config.to_dict(),
        projection_dim=dual.embed_dim,
        logit_scale_init_value=float(_logit_scale(dual)),
    )
    return _load(CLIPModel(config), _projected_state(dual, "vision_model."), "CLIPModel")


def _siglip(dual: Any) -> PreTrainedModel:
    config = SiglipConfig(
        text_config=dual.text.model.config.to_dict(),
        vision_config=dual.vision.model.config.to_dict(),
    )
    bias = dual.logit_bias.detach().clone() if dual.logit_bias is not None else torch.zeros(1)
    state = {
        **_tower_state(dual.vision, "vision_model."),
        **_tower_state(dual.text, "text_model."),
        "logit_scale": _logit_scale(dual).reshape(1),
        "logit_bias": bias.reshape(1),
    }
    return _load(SiglipModel(config), state, "SiglipModel")


def _vision_config(tower: Any) -> PretrainedConfig:
    if tower.cfg.source == "timm":
        pre = resolved_preprocess(tower)
        extra: dict[str, Any] = {  # not declared fields: kept as config attributes
            "hidden_size": tower.width,
            "num_labels": 0,
            "pretrained_cfg": timm_data_config(pre),
        }
        return TimmWrapperConfig(
            architecture=tower.cfg.name,
            model_args=dict(tower.cfg.config_overrides) or None,
            **extra,
        )
    config = copy.deepcopy(tower.model.config)
    config.hidden_size = tower.width  # what VisionTextDualEncoderModel projects from
    return config


def timm_data_config(pre: Any) -> dict[str, Any]:
    """timm's data config reproducing mmcontrast's eval transform: resize with the tower's
    interpolation to ``size / crop_pct`` by the shortest side (``center``), the square
    (``squash``) or the longest side, padded (``border``), then centre-crop ``size``."""
    return {
        "input_size": [3, pre.size, pre.size],
        "mean": list(pre.mean),
        "std": list(pre.std),
        "crop_pct": pre.crop_pct,
        "crop_mode": TIMM_CROP_MODES[pre.resize],
        "interpolation": pre.interpolation,
    }


def _dual_encoder(dual: Any) -> PreTrainedModel:
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        _vision_config(dual.vision),
        copy.deepcopy(dual.text.model.config),
        projection_dim=dual.embed_dim,
        logit_scale_init_value=float(_logit_scale(dual)),
    )
    vision_prefix = (
        "vision_model.timm_model." if dual.vision.cfg.source == "timm" else "vision_model."
    )
    state = _projected_state(dual, vision_prefix)
    return _load(VisionTextDualEncoderModel(config), state, "VisionTextDualEncoderModel")


# --------------------------------------------------------------------------- processors


# ImagePreprocess.interpolation -> PIL's resampling code (transformers' ``resample``)
RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}
TIMM_CROP_MODES = {"shortest": "center", "squash": "squash", "longest": "border"}


def image_processor(tower: Any, kind: str | None = None) -> Any:
    """A transformers image processor doing mmcontrast's eval transform for ``tower``.

    The tower's interpolation (bicubic for CLIP and SigLIP sources), then a resize of the
    shorter side and a centre crop (``CLIPImageProcessor``), or a squash to the square
    (``resize: squash``: ``SiglipImageProcessor`` for ``kind`` ``siglip``, else a
    ``CLIPImageProcessor`` without crop); with a ``crop_pct`` below 1 the resize goes to
    ``size / crop_pct`` and the centre crop to ``size``; scale to [0, 1]; normalise.
    transformers' processors resize tensors with antialiasing as mmcontrast does, so the
    pixels agree to float rounding; :func:`processor_differences` says where they cannot.
    """
    pre = resolved_preprocess(tower)
    square = {"height": pre.size, "width": pre.size}
    side = pre.resize_size
    common: dict[str, Any] = {
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
        "resample": RESAMPLE[pre.interpolation],
        "do_convert_rgb": True,
    }
    if pre.resize == "squash" and side == pre.size and kind == "siglip":
        return SiglipImageProcessor(size=square, **common)
    if pre.resize == "squash":
        resized = {"height": side, "width": side}
        crop = side != pre.size
        return CLIPImageProcessor(size=resized, crop_size=square, do_center_crop=crop, **common)
    return CLIPImageProcessor(size={"shortest_edge": side}, crop_size=square, **common)


def processor_differences(tower: Any) -> list[str]:
    """Where :func:`image_processor` cannot do what the tower trained with, for the notes."""
    pre = resolved_preprocess(tower)
    found = []
    if pre.resize == "longest":
        found.append(
            "the model was trained on images resized by their longest side and padded "
            "(open_clip's resize_mode longest, timm's crop_mode border); the exported image "
            "processor resizes the shortest side and centre-crops instead"
        )
    elif pre.crop_offset == "round" and (pre.resize == "shortest" or pre.resize_size != pre.size):
        found.append(
            "training centre-cropped as torchvision does (an odd margin rounded to even); the "
            "exported image processor crops as transformers does (margin // 2), one pixel "
            "apart for some image shapes"
        )
    return found


def text_tokenizer(tower: Any) -> Any:
    """The text tower's tokenizer, truncating at the length it was trained with."""
    tokenizer = copy.deepcopy(tower.tokenizer().tokenizer)
    tokenizer.model_max_length = tower.cfg.max_length
    return tokenizer


def _processor(dual: Any, kind: str) -> Any:
    images, tokenizer = image_processor(dual.vision, kind), text_tokenizer(dual.text)
    cls = {
        "clip": CLIPProcessor,
        "siglip": SiglipProcessor,
        "vision-text-dual-encoder": VisionTextDualEncoderProcessor,
    }[kind]
    try:
        return cls(image_processor=images, tokenizer=tokenizer)
    except (TypeError, ValueError):  # e.g. a tokenizer class the composite processor rejects
        return VisionTextDualEncoderProcessor(image_processor=images, tokenizer=tokenizer)


# --------------------------------------------------------------------------- verification


@torch.no_grad()
def _verify(dual: Any, model: PreTrainedModel, processor: Any) -> None:
    """Equal normalised embeddings on random images and real captions, or NotExpressible."""
    was_training = dual.training
    dual.eval()
    size = resolved_preprocess(dual.vision).size
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, size, size, generator=generator)
    captions = ["a photo of a cat", "two red apples on a wooden table, seen from above"]
    tokens = dual.text.tokenizer()(captions)
    ours = (dual.get_image_features(pixels), dual.get_text_features(**dict(tokens)))
    exported: Any = model
    theirs = (
        _features(exported.get_image_features(pixel_values=pixels)),
        _features(exported.get_text_features(**dict(tokens))),
    )
    dual.train(was_training)
    for name, a, b in zip(("image", "text"), ours, theirs, strict=True):
        diff = (a - torch.nn.functional.normalize(b, dim=-1)).abs().max().item()
        if not diff <= TOLERANCE:
            raise NotExpressible(
                f"{type(model).__name__} gives different {name} embeddings than the trained "
                f"model (max difference {diff:.2e}); the towers do not map onto it"
            )


def _features(output: Any) -> Tensor:
    """transformers 5 returns a model output from ``get_*_features``; take the embeddings."""
    if isinstance(output, Tensor):
        return output
    return output.pooler_output
