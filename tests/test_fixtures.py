"""The shared fixtures are real: the tiny tokenizer knows its words, the tiny towers' outputs
vary with their inputs."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import WORDS
from transformers import AutoTokenizer

from mmcontrast.config import load_recipe
from mmcontrast.methods import build_method


def test_tiny_tokenizer_gives_each_word_its_own_id(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in WORDS]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(WORDS)
    assert tokenizer.unk_token_id not in {i[0] for i in ids}
    red, blue = tokenizer(["a red circle", "a blue circle"])["input_ids"]
    assert red != blue


def test_tiny_dual_encoder_outputs_vary(tiny_run: list[str]) -> None:
    dual = build_method(load_recipe(None, tiny_run)).trained_model().eval()
    with torch.no_grad():
        texts = dual.get_text_features(**dual.tokenize(["a red circle", "a blue square"]))
        images = dual.get_image_features(
            torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        )
    assert not torch.allclose(texts[0], texts[1], atol=1e-4)
    assert not torch.allclose(images[0], images[1], atol=1e-4)


def test_tiny_clip_model_pools_each_caption(tokenizer_dir: Path, tmp_path: Path) -> None:
    """CLIP pools at the eos token: the tiny config must name the tokenizer's [SEP]."""
    from helpers import save_clip
    from transformers import CLIPModel

    folder = save_clip(tmp_path / "clip", tokenizer_dir)
    model = CLIPModel.from_pretrained(folder).eval()
    tokens = AutoTokenizer.from_pretrained(folder)(
        ["a red circle", "a blue square"], return_tensors="pt"
    )
    with torch.no_grad():
        texts = model.get_text_features(**tokens)
    texts = texts if isinstance(texts, torch.Tensor) else texts.pooler_output
    assert not torch.allclose(texts[0], texts[1], atol=1e-4)
