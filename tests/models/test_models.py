"""Towers of every family built offline (random weights or tiny local checkpoints)."""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import TINY_CLIP_TEXT, TINY_CLIP_VISION, TINY_OPEN_CLIP, TINY_VIT

from mmcontrast.config import ModelConfig, TowerConfig, load_recipe
from mmcontrast.models import build_dual_encoder, build_tower
from mmcontrast.models.tower import count_parameters

VIT = TINY_VIT
BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 32,
}


def vit(**kw: object) -> TowerConfig:
    return TowerConfig(source="hf", name="vit", pretrained=False, config_overrides=dict(VIT), **kw)  # type: ignore[arg-type]


def bert(tokenizer: Path, **kw: object) -> TowerConfig:
    return TowerConfig(
        source="hf",
        name="bert",
        pretrained=False,
        tokenizer=str(tokenizer),
        config_overrides=dict(BERT),
        **kw,
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("pooling", ["auto", "cls", "mean", "pooler"])
def test_hf_vision_tower_poolings(pooling: str) -> None:
    tower = build_tower(vit(pooling=pooling), "vision")
    assert tower.width == 32
    assert tower(pixel_values=torch.randn(2, 3, 32, 32)).shape == (2, 32)


def test_hf_text_tower_mean_pooling_respects_padding(tokenizer_dir: Path) -> None:
    tower = build_tower(bert(tokenizer_dir, pooling="mean"), "text").eval()
    tokens = tower.tokenizer()(["a red circle", "a red circle of the big dark star"])
    assert set(tokens) == {"input_ids", "attention_mask", "token_type_ids"}
    out = tower(**tokens)
    alone = tower(**tower.tokenizer()(["a red circle"]))
    assert torch.allclose(out[0], alone[0], atol=1e-5)  # padding does not change the feature


def test_lock_and_unlocked_layers(tokenizer_dir: Path) -> None:
    tower = build_tower(bert(tokenizer_dir, lock=True, unlocked_layers=1), "text")
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.1." in n or "pooler" in n for n in trainable)
    assert any(".layer.1." in n for n in trainable)
    assert not any("embeddings" in n or ".layer.0." in n for n in trainable)
    locked = build_tower(bert(tokenizer_dir, lock=True), "text")
    assert count_parameters(locked)[0] == 0
    with pytest.raises(ValueError, match="only 2 layers"):
        build_tower(bert(tokenizer_dir, lock=True, unlocked_layers=3), "text")
    with pytest.raises(ValueError, match="lock: true"):
        build_tower(bert(tokenizer_dir, unlocked_layers=1), "text")


def test_dual_encoder_features_scale_and_locked_eval(tokenizer_dir: Path) -> None:
    cfg = ModelConfig(
        vision=vit(lock=True), text=bert(tokenizer_dir), embed_dim=16, projection="mlp"
    )
    model = build_dual_encoder(cfg, init_logit_scale=math.log(1 / 0.07), init_logit_bias=None)
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    model.train()
    assert (
        not model.vision.training and model.text.training
    )  # LiT: the locked tower stays in eval mode
    tokens = model.text.tokenizer()(["a red circle", "a blue star"])
    out = model(pixel_values=torch.randn(2, 3, 32, 32), **tokens)
    assert out["image_features"].shape == out["text_features"].shape == (2, 16)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(2), atol=1e-5)
    assert "logit_bias" not in out
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0, rel=1e-5)  # capped at ln(100)


def test_siglip_init(tokenizer_dir: Path) -> None:
    cfg = load_recipe(None, ["loss.name=siglip"])
    cfg.model = ModelConfig(vision=vit(), text=bert(tokenizer_dir), embed_dim=16)
    from mmcontrast.methods import build_method

    method = build_method(cfg)
    assert method.model.scale().item() == pytest.approx(10.0, rel=1e-5)
    assert method.model.logit_bias.item() == pytest.approx(-10.0)


def test_logit_scale_and_bias_are_shape_one_and_old_state_dicts_load(tokenizer_dir: Path) -> None:
    cfg = load_recipe(None, ["loss.name=siglip"])
    cfg.model = ModelConfig(vision=vit(), text=bert(tokenizer_dir), embed_dim=16)
    from mmcontrast.methods import build_method

    method = build_method(cfg)
    assert all(p.ndim > 0 for p in method.parameters())  # torch's FSDP refuses 0-dim ones
    assert method.model.logit_scale.shape == method.model.logit_bias.shape == (1,)
    assert method.model.scale().shape == ()  # the losses get 0-dim scale and bias
    tokens = method.model.tokenize(["a red circle", "a blue star"])
    out = method.model(pixel_values=torch.randn(2, 3, 32, 32), **tokens)
    assert out["logit_scale"].shape == out["logit_bias"].shape == ()
    # a checkpoint from before the change holds 0-dim values: they load into the [1] params
    old = {k: v.clone() for k, v in method.state_dict().items()}
    old["model.logit_scale"] = torch.tensor(1.5)
    old["model.logit_bias"] = torch.tensor(-3.0)
    method.load_state_dict(old, strict=True)
    assert method.model.logit_scale.shape == (1,) and method.model.logit_bias.shape == (1,)
    assert method.model.logit_scale.item() == pytest.approx(1.5)
    assert method.model.logit_bias.item() == pytest.approx(-3.0)
    method.model.load_state_dict({"logit_scale": torch.tensor(2.0)}, strict=False)  # no prefix
    assert method.model.logit_scale.item() == pytest.approx(2.0)


def test_dual_encoder_trains_under_fsdp2_fully_shard(tokenizer_dir: Path, tmp_path: Path) -> None:
    """FSDP2 in a one-process gloo group on CPU: the logit scale and bias shard and get gradients."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    cfg = load_recipe(None, ["loss.name=siglip"])
    cfg.model = ModelConfig(vision=vit(), text=bert(tokenizer_dir), embed_dim=16)
    from mmcontrast.methods import build_method

    method = build_method(cfg).eval()  # no dropout: the same loss with and without FSDP
    tokens = method.model.tokenize(["a red circle", "a blue star", "a green square"])
    batch = {"pixel_values": torch.randn(3, 3, 32, 32), **tokens}
    loss = method(batch)["loss"]
    loss.backward()
    expected = loss.item()
    grads = [p.grad.clone() for p in (method.model.logit_scale, method.model.logit_bias)]
    method.zero_grad(set_to_none=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        fully_shard(method.model)
        assert isinstance(method.model.logit_scale, DTensor)
        out = method(batch)
        assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
        out["loss"].backward()
        params = (method.model.logit_scale, method.model.logit_bias)
        for param, grad in zip(params, grads, strict=True):
            assert grad.abs().item() > 0
            assert torch.allclose(param.grad.full_tensor(), grad, rtol=1e-4, atol=1e-6)
        # the final weights are gathered whole, not saved as this process's shards
        from mmcontrast.methods.trained import load_weights
        from mmcontrast.train.checkpoint import full_state_dict, save_weights

        assert isinstance(method.state_dict()["model.logit_scale"], DTensor)
        save_weights(method, cfg, tmp_path / "final", full_state_dict(method))
        fresh = build_method(cfg)
        load_weights(fresh, tmp_path / "final")
        for name, value in fresh.state_dict().items():
            assert torch.equal(value, method.state_dict()[name].full_tensor()), name
    finally:
        dist.destroy_process_group()


def test_timm_tower() -> None:
    tower = build_tower(
        TowerConfig(source="timm", name="test_efficientnet", pretrained=False), "vision"
    )
    pre = tower.image_preprocess()
    assert tower(pixel_values=torch.randn(2, 3, pre.size, pre.size)).shape == (2, tower.width)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_tower(
            TowerConfig(source="timm", name="tf_efficientnet_lite99", pretrained=False), "vision"
        )


def test_open_clip_towers_from_config_json(tmp_path: Path) -> None:
    path = tmp_path / "tiny-oc.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP))
    vision = build_tower(
        TowerConfig(source="open_clip", name=str(path), pretrained=False), "vision"
    )
    text = build_tower(TowerConfig(source="open_clip", name=str(path), pretrained=False), "text")
    assert vision(pixel_values=torch.randn(2, 3, 32, 32)).shape == (2, 16)
    tokens = text.tokenizer()(["a photo of a cat", "a dog"])
    assert tokens["input_ids"].shape == (2, 16)
    assert text(**tokens).shape == (2, 16)
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_tower(TowerConfig(source="open_clip", name="ViT-B-23", pretrained=False), "vision")


def test_clip_checkpoint_gives_its_halves(tmp_path: Path, tokenizer_dir: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        vision_config=TINY_CLIP_VISION, text_config=TINY_CLIP_TEXT, projection_dim=16
    )
    clip = CLIPModel(config)
    clip.save_pretrained(tmp_path / "clip")
    vision = build_tower(TowerConfig(source="hf", name=str(tmp_path / "clip")), "vision")
    text = build_tower(
        TowerConfig(source="hf", name=str(tmp_path / "clip"), tokenizer=str(tokenizer_dir)), "text"
    )
    assert vision.pooling == "pooler" and text.pooling == "pooler"

    def weight(module: torch.nn.Module, suffix: str) -> torch.Tensor:
        return next(v for k, v in module.state_dict().items() if k.endswith(suffix))

    assert torch.equal(
        weight(vision, "patch_embedding.weight"),
        clip.vision_model.embeddings.patch_embedding.weight,
    )
    assert torch.equal(
        weight(text, "token_embedding.weight"), clip.text_model.embeddings.token_embedding.weight
    )


@pytest.mark.parametrize("family", ["t5", "xlm-roberta"])
def test_sentencepiece_text_tower(tmp_path: Path, family: str) -> None:
    """Train a tiny sentencepiece model, load it through T5's / XLM-R's tokenizer class."""
    import shutil

    import sentencepiece as spm
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(
            f"a {c} {s} on the {w}"
            for c in "red green blue yellow pink".split()
            for s in "circle square star".split()
            for w in "left right top".split()
        )
    )
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=30, model_type="unigram", hard_vocab_limit=False,
        pad_id=0, unk_id=2, bos_id=-1 if family == "t5" else 1, eos_id=1 if family == "t5" else 3,
    )  # fmt: skip
    folder = tmp_path / "tok"
    if family == "t5":
        from transformers import T5Tokenizer as Tok

        overrides = {
            "d_model": 32,
            "d_ff": 64,
            "num_layers": 2,
            "num_heads": 2,
            "d_kv": 16,
            "vocab_size": 64,
        }
    else:
        from transformers import XLMRobertaTokenizer as Tok

        overrides = {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "vocab_size": 64,
        }
    folder.mkdir()  # the layout of a sentencepiece checkpoint: the .model file + tokenizer_config.json
    shutil.copy(tmp_path / "sp.model", folder / Tok.vocab_files_names["vocab_file"])
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": Tok.__name__}))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert isinstance(tokenizer, Tok)
    cfg = TowerConfig(
        source="hf",
        name=family,
        pretrained=False,
        tokenizer=str(folder),
        config_overrides=overrides,
    )
    tower = build_tower(cfg, "text")
    if family == "t5":
        assert type(tower.model).__name__ == "T5EncoderModel"
    tokens = tower.tokenizer()(["a red circle on the left", "a pink star"])
    assert tokens["input_ids"].max() < 64
    pieces = tokenizer.convert_ids_to_tokens(tokens["input_ids"][0].tolist())
    assert any(p.startswith("▁") for p in pieces)  # sentencepiece word boundaries
    assert tower(**tokens).shape == (2, 32)
