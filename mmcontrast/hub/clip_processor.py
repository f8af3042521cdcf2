"""Tokenizer and image processor of a converted ``CLIPModel``, checked against open_clip's.

The ``CLIPTokenizer`` is built from open_clip's own BPE tables and gives open_clip's ids up to
the end-of-text token. It pads with ``<|endoftext|>`` (49407, as OpenAI's CLIP on the Hub does)
where open_clip pads with 0: making ``!`` (id 0) the pad token would turn every ``!`` in a
caption into a special token. Neither model looks past the first end-of-text token, so
embeddings are equal either way. open_clip also runs ftfy and HTML unescaping on captions and
transformers does not: captions with mojibake, curly quotes or ``&amp;`` can tokenise differently.
``clip_image_processor`` builds a ``CLIPImageProcessor`` doing open_clip's validation
preprocessing; ``_preprocess_cfg_of`` reads one back into open_clip's ``preprocess_cfg``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, cast

import open_clip
import torch

from mmcontrast.hub.clip_mapping import VOCAB_SIZE, _side

CAPTIONS = [  # verification texts: punctuation, upper case, digits, one longer than 77 tokens
    "a photo of a cat.",
    "Hello, World!! It's 2024 -- isn't it?",
    "A RED Square on a dark-blue background",
    " ".join(f"word{i}" for i in range(60)),
]


def clip_tokenizer_from_open_clip(tokenizer: Any) -> Any:
    """A ``CLIPTokenizer`` from open_clip's ``SimpleTokenizer`` BPE tables (no download)."""
    from transformers import CLIPTokenizer

    vocab, merges = _bpe_tables(tokenizer)
    return CLIPTokenizer(  # merges are (a, b) pairs, whatever the type hint says
        vocab=vocab,
        merges=cast(Any, merges),
        pad_token="<|endoftext|>",
        model_max_length=tokenizer.context_length,
    )


def write_bpe_files(tokenizer: Any, folder: Path) -> None:
    """``vocab.json`` and ``merges.txt`` as OpenAI's CLIP ships them, for slow tokenizers."""
    vocab, merges = _bpe_tables(tokenizer)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(" ".join(pair) for pair in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _bpe_tables(tokenizer: Any) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """open_clip's vocabulary (special tokens renamed as OpenAI's) and merges in rank order."""
    vocab = dict(tokenizer.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])]
    return vocab, merges


def _is_default_tokenizer(tokenizer: Any) -> bool:
    return (
        isinstance(tokenizer, open_clip.SimpleTokenizer)
        and len(tokenizer.encoder) == VOCAB_SIZE
        and tokenizer.reduction_fn is None
    )


def _check_tokenizer(clip_tokenizer: Any, reference: Any) -> None:
    """Raise unless the transformers tokenizer gives open_clip's ids (pads aside) on CAPTIONS."""
    expected = reference(CAPTIONS)
    encoded = clip_tokenizer(
        CAPTIONS,
        padding="max_length",
        truncation=True,
        max_length=expected.shape[1],
        return_tensors="pt",
    )
    ids = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, 0)
    if ids.shape != expected.shape or not torch.equal(ids, expected):
        rows = [i for i in range(len(CAPTIONS)) if not torch.equal(ids[i], expected[i])]
        raise RuntimeError(
            f"tokenizer ids differ from open_clip's for {[CAPTIONS[i][:40] for i in rows]}"
        )


def _warn_if_tokenizer_differs(source: str, revision: str | None, context_length: int) -> None:
    """Warn when the source's own tokenizer disagrees with open_clip's on sample captions."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except (OSError, ValueError, TypeError):
        return
    if len(tokenizer) < 512:  # transformers 5 builds an empty CLIPTokenizer without its files
        return
    reference = open_clip.SimpleTokenizer(context_length=context_length)
    try:
        _check_tokenizer(tokenizer, reference)
    except (RuntimeError, ValueError) as err:  # ValueError: e.g. a tokenizer that cannot pad
        warnings.warn(
            f"the tokenizer of {source!r} is not open_clip's default tokenizer ({err}); "
            "open_clip will tokenise texts differently",
            UserWarning,
            stacklevel=3,
        )


def clip_image_processor(preprocess_cfg: dict[str, Any]) -> Any:
    """A ``CLIPImageProcessor`` doing open_clip's validation preprocessing."""
    from transformers import CLIPImageProcessor

    side = _side(preprocess_cfg.get("size", 224))
    mode = preprocess_cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        warnings.warn(
            f"open_clip resize_mode {mode!r} (letterboxing) has no CLIPImageProcessor "
            "equivalent; the processor resizes the shortest edge and center-crops instead",
            UserWarning,
            stacklevel=3,
        )
    bilinear = preprocess_cfg.get("interpolation") == "bilinear"
    crop = mode != "squash"
    return CLIPImageProcessor(
        size={"shortest_edge": side} if crop else {"height": side, "width": side},
        crop_size={"height": side, "width": side},
        do_center_crop=crop,
        resample=2 if bilinear else 3,  # PIL BILINEAR / BICUBIC
        image_mean=list(preprocess_cfg["mean"]),
        image_std=list(preprocess_cfg["std"]),
    )


def _preprocess_cfg_of(source: str, revision: str | None, image_size: int) -> dict[str, Any]:
    """open_clip's ``preprocess_cfg`` from the source's image processor (defaults if none)."""
    from transformers import AutoImageProcessor

    cfg: dict[str, Any] = {
        "size": image_size,
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    try:
        processor = AutoImageProcessor.from_pretrained(source, revision=revision).to_dict()
    except (OSError, ValueError):
        warnings.warn(
            f"{source!r} has no image processor: open_clip will use its defaults (OpenAI's mean "
            "and std, bicubic resize of the shortest edge, center crop)",
            UserWarning,
            stacklevel=3,
        )
        return cfg
    cfg["mean"] = list(processor.get("image_mean") or cfg["mean"])
    cfg["std"] = list(processor.get("image_std") or cfg["std"])
    resample = processor.get("resample", 3)
    cfg["interpolation"] = "bilinear" if resample == 2 else "bicubic"
    size, crop = processor.get("size") or {}, processor.get("crop_size") or {}
    square = {"height": image_size, "width": image_size}
    if processor.get("do_center_crop", True):
        same = size.get("shortest_edge") == image_size and crop == square
    else:
        cfg["resize_mode"] = "squash"
        same = size == square
    if resample not in (2, 3) or not same:
        warnings.warn(
            f"open_clip cannot copy the image processor of {source!r} (size {size}, crop "
            f"{crop}, resample {resample}); it will {cfg['resize_mode']}-resize to {image_size} "
            f"with {cfg['interpolation']} interpolation",
            UserWarning,
            stacklevel=3,
        )
    return cfg
