"""Long-CLIP position stretching: the table against a naive loop from the formula, and tiny
random transformers / open_clip text models whose short-caption outputs must not change."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
from helpers import TINY_BERT, TINY_CLIP_TEXT, TINY_CLIP_VISION, TINY_OPEN_CLIP
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
)

from mmcontrast.models.long_text import stretch_position_embeddings, stretch_text_positions


def naive_stretch(weight: torch.Tensor, new_length: int, keep: int) -> torch.Tensor:
    """Float64, one row at a time: new tail row i sits at old tail position
    i * (T - 1) / (T' - 1) (align_corners=True) and blends its two neighbours."""
    old = weight.double()
    tail, new_tail = old.shape[0] - keep, new_length - keep
    rows = [old[i] for i in range(keep)]
    for i in range(new_tail):
        pos = i * (tail - 1) / (new_tail - 1)
        lo = min(math.floor(pos), tail - 2)
        frac = pos - lo
        rows.append((1 - frac) * old[keep + lo] + frac * old[keep + lo + 1])
    return torch.stack(rows)


# ------------------------------------------------------------------ the table


def test_keeps_head_and_hits_old_rows() -> None:
    torch.manual_seed(0)
    old = torch.randn(12, 6)
    keep, tail, step = 4, 8, 3  # new tail 1 + 7 * 3 = 22: old row j lands on new keep + 3j
    new = stretch_position_embeddings(old, keep + 1 + (tail - 1) * step, keep=keep)
    assert new.shape == (26, 6)
    assert torch.equal(new[:keep], old[:keep])
    assert torch.equal(new[keep], old[keep]) and torch.equal(new[-1], old[-1])  # endpoints
    torch.testing.assert_close(new[keep::step], old[keep:])
    for i in range(keep, 26):  # in between: elementwise between the two neighbouring old rows
        lo = keep + (i - keep) // step
        hi = min(lo + 1, 11)
        low, high = torch.minimum(old[lo], old[hi]), torch.maximum(old[lo], old[hi])
        assert bool(((new[i] >= low - 1e-6) & (new[i] <= high + 1e-6)).all())
    torch.testing.assert_close(new, naive_stretch(old, 26, keep).float())


def test_long_clip_ratio_4() -> None:
    torch.manual_seed(0)
    old = torch.randn(77, 8)
    new = stretch_position_embeddings(old, 20 + (77 - 20) * 4)
    assert new.shape == (248, 8)
    assert torch.equal(new[:20], old[:20]) and torch.equal(new[-1], old[-1])
    torch.testing.assert_close(new, naive_stretch(old, 248, 20).float(), rtol=0, atol=1e-5 * 4)
    half = stretch_position_embeddings(old.bfloat16(), 248)
    assert half.dtype == torch.bfloat16 and torch.equal(half[:20], old[:20].bfloat16())


# ------------------------------------------------------------------ transformers


def test_clip_model_text_half_and_configs() -> None:
    torch.manual_seed(0)
    config = CLIPConfig(text_config=TINY_CLIP_TEXT, vision_config=TINY_CLIP_VISION)
    model = CLIPModel(config)
    vision = model.vision_model.embeddings.position_embedding.weight.clone()
    assert stretch_text_positions(model, 100) == 64
    assert model.text_model.embeddings.position_embedding.num_embeddings == 100
    assert model.config.text_config.max_position_embeddings == 100
    assert model.text_model.config.max_position_embeddings == 100
    assert torch.equal(model.vision_model.embeddings.position_embedding.weight, vision)


def tiny_clip_text(length: int) -> CLIPTextModel:
    torch.manual_seed(0)
    config = CLIPTextConfig(**{**TINY_CLIP_TEXT, "max_position_embeddings": length})
    return CLIPTextModel(config).eval()


def caption(length: int, seed: int) -> torch.Tensor:
    """Random word ids (4..31, the tiny vocabulary) ending with CLIP's eos (3)."""
    ids = torch.randint(4, 32, (2, length), generator=torch.Generator().manual_seed(seed))
    ids[:, -1] = 3
    return ids


def test_clip_text_model_short_unchanged_long_runs() -> None:
    model = tiny_clip_text(32)
    short = caption(12, seed=1)  # shorter than keep=20: reads only kept positions
    with torch.no_grad():
        before = model(input_ids=short)
        with pytest.raises(ValueError, match="max_position_embeddings"):
            model(input_ids=caption(50, seed=2))
    assert stretch_text_positions(model, 62) == 32
    assert model.embeddings.position_embedding.weight.shape == (62, 32)
    assert model.embeddings.position_ids.shape == (1, 62)
    assert torch.equal(model.embeddings.position_ids[0], torch.arange(62))
    assert model.config.max_position_embeddings == 62
    assert "position_ids" not in model.state_dict()  # still non-persistent
    with torch.no_grad():
        after = model(input_ids=short)
        long_a = model(input_ids=caption(50, seed=2)).pooler_output
        long_b = caption(50, seed=2)
        long_b[:, 40] = (long_b[:, 40] - 4 + 1) % 28 + 4  # differs only past the old 32
        long_b = model(input_ids=long_b).pooler_output
    assert torch.equal(after.last_hidden_state, before.last_hidden_state)
    assert torch.equal(after.pooler_output, before.pooler_output)
    assert long_a.std(0).min() > 0  # the two long captions differ
    assert not torch.allclose(long_a, long_b)  # a token past the old table changes the output
    assert model.embeddings.position_embedding.weight.requires_grad


def test_bert_buffers_and_short_unchanged() -> None:
    torch.manual_seed(0)
    model = BertModel(BertConfig(**TINY_BERT)).eval()
    ids = torch.randint(4, 32, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).last_hidden_state
    assert stretch_text_positions(model, 100) == 64
    assert model.embeddings.position_embeddings.num_embeddings == 100
    assert model.embeddings.token_type_ids.shape == (1, 100)
    assert model.config.max_position_embeddings == 100
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, before)
        long = torch.randint(4, 32, (2, 90), generator=torch.Generator().manual_seed(1))
        out = model(input_ids=long).last_hidden_state
    assert out.shape == (2, 90, 32) and out[:, 0].std(0).min() > 0


# ------------------------------------------------------------------ open_clip


def tiny_open_clip(custom_text: bool) -> nn.Module:
    torch.manual_seed(0)
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    cfg = TINY_OPEN_CLIP
    return cls(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"]).eval()


def open_clip_caption(length: int, eos_at: int, seed: int) -> torch.Tensor:
    ids = torch.zeros(2, length, dtype=torch.long)  # 0: open_clip's padding
    words = torch.randint(1, 1000, (2, eos_at), generator=torch.Generator().manual_seed(seed))
    ids[:, :eos_at] = words
    ids[:, eos_at] = 49407  # eot, the largest id: argmax pooling picks it
    return ids


@pytest.mark.parametrize("custom_text", [False, True], ids=["CLIP", "CustomTextCLIP"])
def test_open_clip_short_unchanged_mask_rebuilt(custom_text: bool) -> None:
    model: nn.Module = tiny_open_clip(custom_text)
    text = model.text if custom_text else model
    with torch.no_grad():
        before = model.encode_text(open_clip_caption(16, eos_at=9, seed=1))
        with pytest.raises(RuntimeError):
            model.encode_text(open_clip_caption(40, eos_at=35, seed=2))
    assert stretch_text_positions(model, 40, keep=12) == 16
    assert text.positional_embedding.shape == (40, 32)
    assert isinstance(text.positional_embedding, nn.Parameter)
    assert model.context_length == text.context_length == 40
    fresh = torch.empty(40, 40).fill_(float("-inf")).triu_(1)  # open_clip's build_causal_mask
    assert torch.equal(text.attn_mask, fresh)
    if custom_text:
        assert text.num_pos == 40 and torch.equal(text.build_causal_mask(), fresh)
    assert "attn_mask" not in model.state_dict()
    with torch.no_grad():  # padded to the new length; the causal mask hides the padding
        after = model.encode_text(open_clip_caption(40, eos_at=9, seed=1))
        long_a = model.encode_text(open_clip_caption(40, eos_at=35, seed=2))
        long_b = model.encode_text(open_clip_caption(40, eos_at=35, seed=3))
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert long_a.std(0).min() > 0 and not torch.allclose(long_a, long_b)


# ------------------------------------------------------------------ errors


def test_errors() -> None:
    table = torch.randn(10, 4)
    with pytest.raises(ValueError, match="longer than the current 10"):
        stretch_position_embeddings(table, 10, keep=4)
    with pytest.raises(ValueError, match="keep=10"):
        stretch_position_embeddings(table, 20, keep=10)
    with pytest.raises(ValueError, match="keep=-1"):
        stretch_position_embeddings(table, 20, keep=-1)
    with pytest.raises(ValueError, match="positions, width"):
        stretch_position_embeddings(table[None], 20)
    with pytest.raises(ValueError, match="no absolute learned text position table"):
        stretch_text_positions(nn.Linear(4, 4), 100)
    with pytest.raises(ValueError, match="longer than the current 32"):
        stretch_text_positions(tiny_clip_text(32), 32)
    with pytest.raises(ValueError, match="keep=40"):
        stretch_text_positions(tiny_open_clip(False), 64, keep=40)
    bert = BertModel(BertConfig(**TINY_BERT))
    bert.config.position_embedding_type = "relative_key"
    with pytest.raises(ValueError, match="relative_key"):
        stretch_text_positions(bert, 100)
