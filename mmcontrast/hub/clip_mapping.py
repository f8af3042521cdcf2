"""Config and weight mapping between open_clip's CLIP and transformers ``CLIPModel``.

``clip_config_from_open_clip`` and ``open_clip_config_from_transformers`` translate model
configs (the latter refusing what open_clip cannot express); ``to_transformers_state`` and
``to_open_clip_state`` rename parameters, split or fuse the attention in-projections and
transpose the two projections. Also holds the names shared by the conversion modules: the
tokenizer's ids, the refusal message and ``_side``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import Tensor

VOCAB_SIZE = 49408  # open_clip's default BPE: 256 bytes x 2, 48894 merges, 2 special tokens
BOS_ID, EOS_ID = 49406, 49407
ONLY_STANDARD = "only standard ViT CLIP configs convert"
STANDARD_CLIP = [
    "a ViT image tower pooled at its class token",
    "a causal text transformer pooled at the end-of-text token",
    "bias-free projections",
    "GELU or QuickGELU",
    "no layer scale",
]


def clip_config_from_open_clip(model_cfg: dict[str, Any], logit_scale: float) -> Any:
    """The ``CLIPConfig`` of a (checked) open_clip model config."""
    from transformers import CLIPConfig

    vision = CLIPVisionCfg(**model_cfg["vision_cfg"])
    text = CLIPTextCfg(**model_cfg["text_cfg"])
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    embed_dim = int(model_cfg["embed_dim"])
    assert isinstance(vision.layers, int)  # ResNet towers were refused
    vision_config = {
        "hidden_size": vision.width,
        "intermediate_size": int(vision.width * vision.mlp_ratio),
        "num_hidden_layers": vision.layers,
        "num_attention_heads": vision.width // vision.head_width,
        "image_size": _side(vision.image_size),
        "patch_size": _side(vision.patch_size),
        "hidden_act": act,
        "layer_norm_eps": (vision.norm_kwargs or {}).get("eps", 1e-5),
        "projection_dim": embed_dim,
    }
    text_config = {
        "hidden_size": text.width,
        "intermediate_size": int(text.width * text.mlp_ratio),
        "num_hidden_layers": text.layers,
        "num_attention_heads": text.heads,
        "max_position_embeddings": text.context_length,
        "vocab_size": text.vocab_size,
        "hidden_act": act,
        "layer_norm_eps": (text.norm_kwargs or {}).get("eps", 1e-5),
        "projection_dim": embed_dim,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,  # first end-of-text token: open_clip's argmax for its ids
        "pad_token_id": EOS_ID,  # what the converted tokenizer pads with
    }
    return CLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=embed_dim,
        logit_scale_init_value=logit_scale,
    )


def open_clip_config_from_transformers(config: Any, source: str = "model") -> dict[str, Any]:
    """The open_clip ``model_cfg`` of a ``CLIPConfig``; refuses what open_clip cannot express."""
    vision, text = config.vision_config, config.text_config
    problems = []
    acts = {vision.hidden_act, text.hidden_act}
    if len(acts) > 1 or not acts <= {"gelu", "quick_gelu"}:
        problems.append(
            f"activations {vision.hidden_act!r} (vision) and {text.hidden_act!r} (text): open_clip "
            "uses 'gelu' or 'quick_gelu' in both towers"
        )
    if vision.num_channels != 3:
        problems.append(f"{vision.num_channels} image channels (open_clip reads RGB)")
    image_size, patch_size = _side(vision.image_size), _side(vision.patch_size)
    if image_size is None or patch_size is None:
        problems.append("a non-square image or patch size")
    if text.eos_token_id not in (2, EOS_ID):  # 2: transformers' legacy argmax pooling
        problems.append(
            f"text pooling at eos_token_id {text.eos_token_id} (open_clip pools the highest "
            f"token id, {EOS_ID} with its tokenizer)"
        )
    if text.vocab_size < VOCAB_SIZE:
        problems.append(
            f"text vocab_size {text.vocab_size}: open_clip's default tokenizer emits ids up to "
            f"{VOCAB_SIZE - 1}"
        )
    if problems:
        raise ValueError(f"cannot convert {source!r} to open_clip: {_refusal(problems)}")
    if text.vocab_size != VOCAB_SIZE:
        warnings.warn(
            f"{source!r} has a text vocab_size of {text.vocab_size}, not {VOCAB_SIZE}: open_clip "
            f"tokenises with its default {VOCAB_SIZE}-token BPE, so texts tokenise as this model "
            "expects only if its tokenizer is that vocabulary",
            UserWarning,
            stacklevel=3,
        )
    vision_cfg: dict[str, Any] = {
        "image_size": image_size,
        "layers": vision.num_hidden_layers,
        "width": vision.hidden_size,
        "head_width": vision.hidden_size // vision.num_attention_heads,
        "mlp_ratio": _mlp_ratio(vision.hidden_size, vision.intermediate_size),
        "patch_size": patch_size,
    }
    text_cfg: dict[str, Any] = {
        "context_length": text.max_position_embeddings,
        "vocab_size": text.vocab_size,
        "width": text.hidden_size,
        "heads": text.num_attention_heads,
        "layers": text.num_hidden_layers,
        "mlp_ratio": _mlp_ratio(text.hidden_size, text.intermediate_size),
    }
    for cfg, eps in ((vision_cfg, vision.layer_norm_eps), (text_cfg, text.layer_norm_eps)):
        if eps != 1e-5:
            cfg["norm_kwargs"] = {"eps": eps}
    return {
        "embed_dim": config.projection_dim,
        "quick_gelu": vision.hidden_act == "quick_gelu",
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }


def _mlp_ratio(width: int, intermediate_size: int) -> float:
    """The ratio open_clip turns back into ``intermediate_size`` (``int(width * ratio)``)."""
    ratio = intermediate_size / width
    if int(width * ratio) < intermediate_size:  # e.g. 61 / 56 * 56 == 60.99999999999999
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _name_pairs(vision_layers: int, text_layers: int) -> dict[str, list[tuple[str, str]]]:
    """open_clip <-> transformers parameter names: copied, fused-attention and transposed ones."""
    copied = [
        ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
        ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
        ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
        ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
        ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ]
    with_bias = [  # modules with a weight and a bias: LayerNorms and Linears
        ("visual.ln_pre", "vision_model.pre_layrnorm"),
        ("visual.ln_post", "vision_model.post_layernorm"),
        ("ln_final", "text_model.final_layer_norm"),
    ]
    blocks = [
        (f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}")
        for i in range(vision_layers)
    ] + [
        (f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}") for i in range(text_layers)
    ]
    for oc, hf in blocks:
        with_bias += [(f"{oc}.ln_1", f"{hf}.layer_norm1"), (f"{oc}.ln_2", f"{hf}.layer_norm2")]
        with_bias += [(f"{oc}.attn.out_proj", f"{hf}.self_attn.out_proj")]
        with_bias += [(f"{oc}.mlp.c_fc", f"{hf}.mlp.fc1"), (f"{oc}.mlp.c_proj", f"{hf}.mlp.fc2")]
    copied += [(f"{oc}.{p}", f"{hf}.{p}") for oc, hf in with_bias for p in ("weight", "bias")]
    return {
        "copied": copied,
        "attention": [(f"{oc}.attn", f"{hf}.self_attn") for oc, hf in blocks],
        "transposed": [
            ("visual.proj", "visual_projection.weight"),
            ("text_projection", "text_projection.weight"),
        ],
    }


def to_transformers_state(
    state: dict[str, Tensor], vision_layers: int, text_layers: int
) -> dict[str, Tensor]:
    """open_clip CLIP (or CustomTextCLIP) state dict -> ``CLIPModel`` state dict."""
    state = {key.removeprefix("text."): value for key, value in state.items()}
    pairs = _name_pairs(vision_layers, text_layers)
    out = {hf: state[oc] for oc, hf in pairs["copied"]}
    used = {oc for oc, _ in pairs["copied"]}
    for oc, hf in pairs["attention"]:
        for kind in ("weight", "bias"):
            fused = f"{oc}.in_proj_{kind}"
            for part, tensor in zip("qkv", state[fused].chunk(3), strict=True):
                out[f"{hf}.{part}_proj.{kind}"] = tensor.contiguous()
            used.add(fused)
    for oc, hf in pairs["transposed"]:
        out[hf] = state[oc].T.contiguous()
        used.add(oc)
    out["logit_scale"] = state["logit_scale"].reshape(())
    left = sorted(set(state) - used - {"logit_scale"})
    if left:
        raise ValueError(
            f"open_clip weights {left[:5]} have no place in CLIPModel; {ONLY_STANDARD}"
        )
    return out


def to_open_clip_state(
    state: dict[str, Tensor], vision_layers: int, text_layers: int
) -> dict[str, Tensor]:
    """``CLIPModel`` state dict -> open_clip CLIP state dict."""
    pairs = _name_pairs(vision_layers, text_layers)
    out = {oc: state[hf].contiguous() for oc, hf in pairs["copied"]}
    used = {hf for _, hf in pairs["copied"]}
    for oc, hf in pairs["attention"]:
        for kind in ("weight", "bias"):
            parts = [f"{hf}.{part}_proj.{kind}" for part in "qkv"]
            out[f"{oc}.in_proj_{kind}"] = torch.cat([state[p] for p in parts])
            used.update(parts)
    for oc, hf in pairs["transposed"]:
        out[oc] = state[hf].T.contiguous()
        used.add(hf)
    out["logit_scale"] = state["logit_scale"].reshape(())
    left = sorted(set(state) - used - {"logit_scale"})
    if left:
        raise ValueError(f"CLIPModel weights {left[:5]} have no place in open_clip's CLIP")
    return out


def _side(size: Any) -> int | None:
    """``224`` or ``[224, 224]`` -> 224; non-square -> None."""
    if isinstance(size, list | tuple):
        return int(size[0]) if len(set(size)) == 1 else None
    return int(size)


def _refusal(problems: list[str]) -> str:
    return f"{'; '.join(problems)}. {ONLY_STANDARD} ({', '.join(STANDARD_CLIP)})"
