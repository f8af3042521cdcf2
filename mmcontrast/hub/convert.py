"""Conversion between open_clip checkpoints and transformers ``CLIPModel``, both directions.

Only the standard ViT CLIP converts: a ViT image tower pooled at its class token, with
LayerNorms before and after the transformer and a bias-free projection; a causal text
transformer pooled at the end-of-text token (open_clip's ``argmax`` pooling) with a bias-free
projection; GELU or QuickGELU in both towers. Anything else (timm or ResNet image towers,
transformers text towers, attentional pooling, layer scale, CoCa, ...) raises a ``ValueError``
naming the feature. Each direction checks that the converted model's image and text
embeddings equal the source's (max abs difference <= 1e-5 in float32) before it returns.

The tokenizer and image processor come from ``clip_processor`` (which also documents where
tokenisation can differ), the config and weight mapping from ``clip_mapping``.

Example:
    >>> open_clip_to_transformers("ViT-B-32", "b32-hf", checkpoint="laion2b_s34b_b79k")
    >>> transformers_to_open_clip("b32-hf", "b32-open-clip")
    >>> open_clip.create_model_and_transforms("local-dir:b32-open-clip")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import Tensor

from mmcontrast.hub.clip_mapping import (
    ONLY_STANDARD,
    VOCAB_SIZE,
    _refusal,
    _side,
    clip_config_from_open_clip,
    open_clip_config_from_transformers,
    to_open_clip_state,
    to_transformers_state,
)
from mmcontrast.hub.clip_processor import (
    CAPTIONS,
    _check_tokenizer,
    _is_default_tokenizer,
    _preprocess_cfg_of,
    _warn_if_tokenizer_differs,
    clip_image_processor,
    clip_tokenizer_from_open_clip,
    write_bpe_files,
)
from mmcontrast.models.open_clip_tower import (
    OPEN_CLIP_SCHEMAS,
    open_clip_model_config,
    open_clip_model_name,
)
from mmcontrast.models.weights import save_state_file

ATOL = 1e-5
CONFIG_NAME = "open_clip_config.json"  # open_clip's Hub layout (local-dir: / hf-hub:)
WEIGHTS_NAME = "open_clip_model.safetensors"
CUSTOM_BLOCK_FLAGS = (
    "qk_norm",
    "scaled_cosine_attn",
    "scale_heads",
    "scale_attn_inner",
    "scale_attn",
    "scale_fc",
)
CHECKPOINT_SUFFIXES = {".safetensors", ".pt", ".pth", ".bin", ".ckpt"}


def open_clip_to_transformers(
    model: str, output_dir: str | Path, checkpoint: str | None = None, *, atol: float = ATOL
) -> Path:
    """Convert an open_clip model to a transformers ``CLIPModel`` folder with its processor.

    Args:
        model: open_clip model name (``ViT-B-32``), model config JSON, ``local-dir:DIR`` or
            ``hf-hub:ORG/REPO``.
        output_dir: Folder for ``config.json``, ``model.safetensors`` and the processor files.
        checkpoint: State dict file (``.safetensors`` or a torch file), an open_clip pretrained
            tag, or None: the weights of a ``local-dir:``/``hf-hub:`` model, random otherwise.
        atol: Largest allowed difference between open_clip's and the converted embeddings.

    Returns:
        ``output_dir``, loadable with ``AutoModel`` and ``AutoProcessor``.

    Raises:
        ValueError: The config is not a standard ViT CLIP, or the checkpoint does not fit.
        FileNotFoundError: The checkpoint file or model folder does not exist.
        RuntimeError: The converted model or tokenizer disagrees with open_clip (nothing saved).
    """
    from transformers import CLIPModel, CLIPProcessor

    name = open_clip_model_name(model)
    model_cfg = open_clip_model_config(name)
    model_cfg["quick_gelu"] = bool(model_cfg.get("quick_gelu")) or _tag_quick_gelu(name, checkpoint)
    problems = unsupported_open_clip_features(model_cfg)
    if problems:
        raise ValueError(f"cannot convert open_clip model {model!r}: {_refusal(problems)}")
    source = _build_open_clip(name, checkpoint, model_cfg["quick_gelu"])
    tokenizer = open_clip.get_tokenizer(name)
    if not _is_default_tokenizer(tokenizer):
        raise ValueError(
            f"cannot convert open_clip model {model!r}: its tokenizer "
            f"({type(tokenizer).__name__}) is not open_clip's default {VOCAB_SIZE}-token BPE; "
            f"{ONLY_STANDARD}"
        )
    config = clip_config_from_open_clip(model_cfg, float(source.logit_scale.detach().item()))
    target = CLIPModel(config).eval()
    state = to_transformers_state(
        source.state_dict(),
        config.vision_config.num_hidden_layers,
        config.text_config.num_hidden_layers,
    )
    target.load_state_dict(state, strict=True)
    clip_tokenizer = clip_tokenizer_from_open_clip(tokenizer)
    _check_tokenizer(clip_tokenizer, tokenizer)
    tokens = tokenizer(CAPTIONS)
    _check_same_embeddings(source, target, config.vision_config.image_size, tokens, atol)

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    target.save_pretrained(output)
    image_processor = clip_image_processor(source.visual.preprocess_cfg)
    CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer).save_pretrained(output)
    write_bpe_files(tokenizer, output)
    return output


def transformers_to_open_clip(
    source: str | Path,
    output_dir: str | Path,
    *,
    revision: str | None = None,
    atol: float = ATOL,
) -> Path:
    """Convert a transformers ``CLIPModel`` to open_clip's Hub layout.

    Writes ``open_clip_config.json`` (``model_cfg`` and ``preprocess_cfg``) and
    ``open_clip_model.safetensors``; ``open_clip.create_model_and_transforms("local-dir:OUT")``
    (or ``hf-hub:ORG/REPO`` once pushed) loads them and tokenises with open_clip's default
    tokenizer, which equals the model's own only if its vocabulary is OpenAI's (49408 ids).

    Args:
        source: Local ``CLIPModel`` folder or Hub id.
        output_dir: Folder for the two files.
        revision: Hub revision of ``source``.
        atol: Largest allowed difference between the source's and open_clip's embeddings.

    Returns:
        ``output_dir``.

    Raises:
        ValueError: ``source`` is unreadable, not a ``CLIPModel``, or uses what open_clip
            cannot express.
        RuntimeError: open_clip's embeddings differ from the source's (the files are removed).
    """
    from transformers import AutoConfig, CLIPModel

    try:
        config = AutoConfig.from_pretrained(str(source), revision=revision)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not read the transformers config of {str(source)!r} (not a model folder, "
            f"no network for a Hub id, a typo or a gated repo?): {err}"
        ) from err
    if config.model_type != "clip":
        raise ValueError(
            f"{str(source)!r} is a {config.model_type!r} model; only transformers CLIPModel "
            "(model_type 'clip') converts to open_clip"
        )
    model_cfg = open_clip_config_from_transformers(config, str(source))
    clip: Any = CLIPModel.from_pretrained(
        str(source), revision=revision or "main", dtype=torch.float32
    )
    clip.eval()
    preprocess_cfg = _preprocess_cfg_of(
        str(source), revision, model_cfg["vision_cfg"]["image_size"]
    )
    _warn_if_tokenizer_differs(str(source), revision, model_cfg["text_cfg"]["context_length"])
    state = to_open_clip_state(
        clip.state_dict(), model_cfg["vision_cfg"]["layers"], model_cfg["text_cfg"]["layers"]
    )

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    written = [output / CONFIG_NAME, output / WEIGHTS_NAME]
    payload = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    written[0].write_text(json.dumps(payload, indent=2) + "\n")
    save_state_file(state, str(written[1]), metadata={"format": "pt"})
    try:
        name = f"local-dir:{output}"
        converted: Any = open_clip.create_model(name).eval()
        tokens = open_clip.get_tokenizer(name)(CAPTIONS)
        _check_same_embeddings(converted, clip, model_cfg["vision_cfg"]["image_size"], tokens, atol)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return output


def unsupported_open_clip_features(model_cfg: dict[str, Any]) -> list[str]:
    """What in an open_clip model config ``CLIPModel`` cannot express (empty: convertible)."""
    if "multimodal_cfg" in model_cfg:
        return ["CoCa (multimodal_cfg)"]
    problems = []
    if model_cfg.get("init_logit_bias") is not None:
        problems.append("a logit bias (init_logit_bias, SigLIP-style)")
    try:
        vision = CLIPVisionCfg(**model_cfg["vision_cfg"])
        text = CLIPTextCfg(**model_cfg["text_cfg"])
    except (KeyError, TypeError) as err:
        return [f"a config open_clip's CLIP does not read ({err})"]
    if vision.timm_model_name:
        problems.append("a timm image tower (timm_model_name)")
    if isinstance(vision.layers, list | tuple):
        problems.append("a ResNet image tower (vision layers is a list)")
    if vision.attentional_pool:
        problems.append("attentional pooling (vision attentional_pool)")
    if vision.pool_type != "tok":  # with class-token pooling, final_ln_after_pool changes nothing
        problems.append(f"image pooling {vision.pool_type!r} (CLIPModel pools the class token)")
    if vision.no_ln_pre:
        problems.append("no LayerNorm before the image transformer (no_ln_pre)")
    if not _square(vision.image_size) or not _square(vision.patch_size):
        problems.append("a non-square image or patch size")
    if text.hf_model_name:
        problems.append("a transformers text tower (hf_model_name)")
    if text.hf_tokenizer_name:
        problems.append("a transformers tokenizer (hf_tokenizer_name)")
    if {k: v for k, v in (text.tokenizer_kwargs or {}).items() if (k, v) != ("clean", "lower")}:
        problems.append(f"tokenizer arguments {text.tokenizer_kwargs} (tokenizer_kwargs)")
    if text.embed_cls:
        problems.append("a text class token (embed_cls, CoCa-style)")
    if text.no_causal_mask:
        problems.append("bidirectional text attention (no_causal_mask)")
    if text.pool_type != "argmax":
        problems.append(
            f"text pooling {text.pool_type!r} (CLIPModel pools the end-of-text token, "
            "open_clip's 'argmax')"
        )
    if text.proj_bias:
        problems.append("a bias on the text projection (proj_bias)")
    if text.proj_type != "linear":
        problems.append(f"text projection type {text.proj_type!r} (proj_type)")
    if text.vocab_size != VOCAB_SIZE:
        problems.append(
            f"text vocab_size {text.vocab_size} (the converted tokenizer is open_clip's "
            f"{VOCAB_SIZE}-token BPE)"
        )
    for tower, cfg in (("vision", vision), ("text", text)):
        problems += _tower_problems(tower, cfg)
    return problems


def _tower_problems(tower: str, cfg: CLIPVisionCfg | CLIPTextCfg) -> list[str]:
    problems = []
    if cfg.ls_init_value is not None:
        problems.append(f"layer scale ({tower} ls_init_value)")
    custom = [flag for flag in CUSTOM_BLOCK_FLAGS if getattr(cfg, flag)]
    if custom or cfg.block_type not in (None, "default"):
        problems.append(f"custom attention blocks ({tower} {', '.join(custom) or 'block_type'})")
    if cfg.act_kwargs:
        problems.append(f"activation arguments ({tower} act_kwargs)")
    if set(cfg.norm_kwargs or {}) - {"eps"}:
        problems.append(f"LayerNorm arguments other than eps ({tower} norm_kwargs)")
    if cfg.output_tokens:
        problems.append(f"token outputs ({tower} output_tokens)")
    return problems


def _build_open_clip(name: str, checkpoint: str | None, quick_gelu: bool) -> Any:
    """The open_clip model with the requested weights, in float32 eval mode."""
    schema = name.startswith(OPEN_CLIP_SCHEMAS)
    if checkpoint is None:  # local-dir:/hf-hub: weights are required, plain names are random
        model = open_clip.create_model(name, force_quick_gelu=quick_gelu, require_pretrained=schema)
    elif Path(checkpoint).is_file():
        model = open_clip.create_model(name, load_weights=False, force_quick_gelu=quick_gelu)
        try:
            open_clip.load_checkpoint(model, checkpoint, strict=True, weights_only=True)
        except (RuntimeError, KeyError, ValueError) as err:
            raise ValueError(f"checkpoint {checkpoint!r} does not fit {name!r}: {err}") from err
    elif Path(checkpoint).suffix in CHECKPOINT_SUFFIXES or "/" in checkpoint:
        raise FileNotFoundError(f"checkpoint file {checkpoint!r} not found")
    elif schema:
        raise ValueError(
            f"pretrained tag {checkpoint!r} only applies to built-in open_clip names; {name!r} "
            "brings its own weights (or pass a checkpoint file)"
        )
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if checkpoint not in tags:
            raise ValueError(
                f"{checkpoint!r} is neither a checkpoint file nor a pretrained tag of {name!r} "
                f"(tags: {', '.join(tags) or 'none'})"
            )
        try:
            model = open_clip.create_model(name, pretrained=checkpoint, force_quick_gelu=quick_gelu)
        except RuntimeError as err:
            raise ValueError(
                f"could not fetch the {checkpoint!r} weights of {name!r} (no network?): {err}"
            ) from err
    return model.float().eval()


def _tag_quick_gelu(name: str, checkpoint: str | None) -> bool:
    """Weights trained with QuickGELU (OpenAI's) say so in their tag, not in the model name."""
    if checkpoint is None or name.startswith(OPEN_CLIP_SCHEMAS) or Path(checkpoint).is_file():
        return False
    return bool(open_clip.get_pretrained_cfg(name, checkpoint).get("quick_gelu", False))


@torch.no_grad()
def _check_same_embeddings(
    open_clip_model: Any, clip: Any, image_size: int, tokens: Tensor, atol: float
) -> None:
    """Raise unless image and text embeddings agree within ``atol`` on random pixels, CAPTIONS."""
    pixels = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    pairs = {
        "image": (
            open_clip_model.encode_image(pixels),
            _pooled(clip.get_image_features(pixel_values=pixels)),
        ),
        "text": (
            open_clip_model.encode_text(tokens),
            _pooled(clip.get_text_features(input_ids=tokens)),
        ),
    }
    for kind, (expected, got) in pairs.items():
        difference = (expected - got).abs().max().item() if expected.shape == got.shape else None
        if difference is None or not difference <= atol:
            raise RuntimeError(
                f"conversion check failed: {kind} embeddings of the converted model differ from "
                f"the source's (max abs difference {difference}, allowed {atol:g}); please "
                "report this with the model config"
            )


def _pooled(output: Any) -> Tensor:
    """transformers 5 returns an output whose ``pooler_output`` holds the embeddings."""
    return output if isinstance(output, Tensor) else output.pooler_output


def _square(size: Any) -> bool:
    return _side(size) is not None
