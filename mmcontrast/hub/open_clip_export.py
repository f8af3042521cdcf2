"""A dual encoder made of an open_clip model, back in open_clip's own format.

A run that started from an open_clip model (``model.init_from: open_clip:...``, or two
open_clip towers of one model with ``projection: none``) is that model with new weights:
:func:`save_open_clip` puts the two halves together again (``model.visual`` and the text
encoder, the run's logit scale and bias) and writes open_clip's Hub layout, as open_clip's
``push_to_hf_hub`` does:

* ``open_clip_config.json``: ``{"model_cfg": ..., "preprocess_cfg": ...}``, the model config
  the run built (its ``config_overrides`` folded in) and the preprocessing it trained with
  (mean, std, ``bicubic`` or ``bilinear``, ``shortest`` resize and centre crop, ``squash``,
  or ``longest`` resize and pad);
* ``open_clip_model.safetensors``: every weight, under open_clip's own names;
* a transformers tokenizer's files when the model tokenises with one (``hf_tokenizer_name``).

``open_clip.create_model_and_transforms("local-dir:DIR")`` (or ``hf-hub:ORG/REPO`` once
pushed) and ``open_clip.get_tokenizer`` load it with neither mmcontrast nor peft (LoRA is
merged before export). Each export is checked: the folder, loaded by open_clip, must give
the run's tokens and normalised embeddings (1e-5) before it is kept. A standard ViT CLIP
converts further to a transformers ``CLIPModel`` with :mod:`mmcontrast.hub.convert`.

Reference: Cherti et al. 2023, Reproducible scaling laws for contrastive language-image
learning (open_clip).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast.config import TowerConfig
from mmcontrast.hub.clip_processor import CAPTIONS
from mmcontrast.hub.convert import CONFIG_NAME, WEIGHTS_NAME, unsupported_open_clip_features
from mmcontrast.hub.transformers_export import TOLERANCE, NotExpressible
from mmcontrast.models.open_clip_tower import (
    open_clip_model_config,
    open_clip_model_name,
    open_clip_preprocess,
)
from mmcontrast.models.tower import resolved_preprocess
from mmcontrast.models.weights import save_state_file

# open_clip.create_model's own arguments that change the model config, as config keys
FORCED = {
    "force_quick_gelu": ("quick_gelu",),
    "force_custom_text": ("custom_text",),
    "force_patch_dropout": ("vision_cfg", "patch_dropout"),
    "force_image_size": ("vision_cfg", "image_size"),
    "force_context_length": ("text_cfg", "context_length"),
}
CREATE_ARGUMENTS = set(inspect.signature(open_clip.create_model).parameters)
INTERPOLATIONS = ("bicubic", "bilinear")  # what open_clip's image_transform resizes with


def is_open_clip(dual: Any) -> bool:
    """Whether both towers of ``dual`` are open_clip towers (the format to try first)."""
    return all(t.cfg.source == "open_clip" for t in (dual.vision, dual.text))


def save_open_clip(dual: Any, output: str | Path) -> list[str]:
    """Write ``dual`` to ``output`` in open_clip's Hub layout; returns notes for the summary.

    Raises:
        NotExpressible: The towers are not the two halves of one open_clip model without
            extra projections, or open_clip's reload differs from ``dual`` (nothing is kept).
    """
    problems = _problems(dual)
    if problems:
        raise NotExpressible(f"not an open_clip model: {'; '.join(problems)}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model_cfg = open_clip_config(dual.vision.cfg)
    notes: list[str] = []
    model = whole_model(dual)
    if dual.logit_bias is not None and model_cfg.get("init_logit_bias") is None:
        model_cfg["init_logit_bias"] = float(dual.logit_bias.detach().reshape(-1)[0])
        notes.append(
            "the sigmoid loss's logit bias is kept as open_clip's logit_bias (init_logit_bias "
            "in the config): open_clip builds the model SigLIP-style"
        )
    preprocess_cfg, size_note = _preprocess_cfg(dual.vision, model_cfg)
    notes += [size_note] if size_note else []
    written = [output / CONFIG_NAME, output / WEIGHTS_NAME]
    tokenizer = dual.text.tokenizer().tokenize  # open_clip's own (OpenClipTokenizer)
    if hasattr(tokenizer, "save_pretrained"):  # a transformers tokenizer: its files go along
        before = set(output.iterdir())
        tokenizer.save_pretrained(str(output))
        written += sorted(set(output.iterdir()) - before)
        text_cfg = model_cfg.setdefault("text_cfg", {})
        text_cfg["hf_tokenizer_name"] = text_cfg.get("hf_tokenizer_name") or dual.text.model_name
    payload = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    written[0].write_text(json.dumps(payload, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_state_file(state, str(written[1]), metadata={"format": "pt"})
    try:
        verify(dual, f"local-dir:{output}")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    problems = unsupported_open_clip_features(model_cfg)
    if not problems and not hasattr(tokenizer, "save_pretrained"):
        notes.append(
            "a standard ViT CLIP: `mmcontrast convert local-dir:FOLDER --output OUT` (or the "
            "run's export with --format transformers) makes a transformers CLIPModel of it"
        )
    return notes


def _problems(dual: Any) -> list[str]:
    problems = [
        f"the {t.modality} tower comes from {t.cfg.source!r}"
        for t in (dual.vision, dual.text)
        if t.cfg.source != "open_clip"
    ]
    if problems:
        return problems
    vision, text = dual.vision.cfg, dual.text.cfg
    if (vision.name, vision.config_overrides) != (text.name, text.config_overrides):
        problems.append(
            f"the towers come from two open_clip models ({vision.name!r} and {text.name!r})"
        )
    extra = [
        name
        for name in ("vision_projection", "text_projection")
        if not isinstance(getattr(dual, name), nn.Identity)
    ]
    if extra:
        problems.append(
            f"model.projection adds {' and '.join(extra)} after open_clip's own projections "
            "(open_clip has no place for them; train with projection: none)"
        )
    if not isinstance(getattr(dual.text.model, "visual", None), nn.Identity):
        problems.append("the text tower is not the text half of an open_clip model")
    if any("lora_" in name for name, _ in dual.named_parameters()):
        problems.append("LoRA adapters are not merged")
    return problems


def whole_model(dual: Any) -> Any:
    """A copy of the open_clip model the two towers are the halves of, with the run's logit
    scale (capped as training uses it) and bias."""
    model: Any = copy.deepcopy(dual.text.model)
    model.visual = copy.deepcopy(dual.vision.model)
    model.requires_grad_(False)
    scale = dual.logit_scale.detach().clamp(max=dual.max_logit_scale)
    model.logit_scale = nn.Parameter(scale.reshape(model.logit_scale.shape).clone())
    if dual.logit_bias is not None:
        old = getattr(model, "logit_bias", None)
        shape = old.shape if isinstance(old, Tensor) else model.logit_scale.shape
        model.logit_bias = nn.Parameter(dual.logit_bias.detach().reshape(shape).clone())
    return model.float().eval()


def open_clip_config(cfg: TowerConfig) -> dict[str, Any]:
    """The model config an open_clip tower was built from, ``config_overrides`` folded in."""
    model_cfg = copy.deepcopy(open_clip_model_config(open_clip_model_name(cfg.name)))
    for key, value in cfg.config_overrides.items():
        if key in FORCED:
            if value is None or value is False:
                continue
            *parents, last = FORCED[key]
            target = model_cfg
            for parent in parents:
                target = target.setdefault(parent, {})
            target[last] = value
        elif key not in CREATE_ARGUMENTS:  # open_clip passes the rest to the model class
            model_cfg[key] = value
    return model_cfg


def _preprocess_cfg(vision: Any, model_cfg: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """open_clip's ``preprocess_cfg`` of what training did; a note if open_clip resizes to
    another size (it always uses the model's ``image_size``)."""
    pre = resolved_preprocess(vision)
    if pre.interpolation not in INTERPOLATIONS or pre.crop_pct != 1:
        raise NotExpressible(
            f"the vision tower resizes with {pre.interpolation!r} interpolation to size / "
            f"{pre.crop_pct:g} before its crop; open_clip's preprocessing resizes straight to "
            f"the size, with {' or '.join(INTERPOLATIONS)} interpolation"
        )
    preprocess: dict[str, Any] = {
        "mean": list(pre.mean),
        "std": list(pre.std),
        "interpolation": pre.interpolation,
        "resize_mode": pre.resize,  # shortest (+ centre crop), squash or longest (+ pad)
    }
    if pre.resize == "longest":
        fill = list(pre.fill)
        preprocess["fill_color"] = fill[0] if len(set(fill)) == 1 else fill
    size = model_cfg.get("vision_cfg", {}).get("image_size")
    side = size[0] if isinstance(size, list | tuple) else size
    if side is not None and int(side) != pre.size:
        note = (
            f"the run resized images to {pre.size} px (model.vision.image_size); open_clip "
            f"resizes them to the model's image_size, {side} px"
        )
        return preprocess, note
    return preprocess, None


@torch.no_grad()
def verify(dual: Any, name: str) -> None:
    """open_clip's model ``name`` tokenises and embeds as ``dual`` (1e-5), or NotExpressible."""
    loaded: Any = open_clip.create_model(name, require_pretrained=True).eval()
    tokenizer = open_clip.get_tokenizer(name)
    was_training = dual.training
    dual.eval()
    try:
        pre = resolved_preprocess(dual.vision)
        loaded_pre = open_clip_preprocess(open_clip.get_model_preprocess_cfg(loaded))
        if dataclasses.replace(loaded_pre, size=pre.size) != pre:
            raise NotExpressible(
                f"open_clip preprocesses {name!r} otherwise than the run ({loaded_pre} "
                f"instead of {pre})"
            )
        size = pre.size
        pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        ours_tokens = dual.tokenize(CAPTIONS)["input_ids"]
        tokens = tokenizer(CAPTIONS)
        if tokens.shape != ours_tokens.shape or not torch.equal(tokens, ours_tokens):
            raise NotExpressible(
                f"open_clip's tokenizer for {name!r} gives other token ids than the run's"
            )
        pairs = {
            "image": (dual.get_image_features(pixels), loaded.encode_image(pixels)),
            "text": (dual.get_text_features(input_ids=tokens), loaded.encode_text(tokens)),
        }
    finally:
        dual.train(was_training)
    for kind, (ours, theirs) in pairs.items():
        theirs = F.normalize(theirs, dim=-1)
        diff = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else None
        if diff is None or not diff <= TOLERANCE:
            raise NotExpressible(
                f"open_clip's model gives different {kind} embeddings than the trained model "
                f"(max difference {diff}); please report this with the run's config"
            )
