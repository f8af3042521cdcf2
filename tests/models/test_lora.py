"""``model.{vision,text}.lora``: LoRA / DoRA adapters through peft. Only the adapters (and the
heads) train, the adapted tower starts as the base tower, bad settings are refused with the
valid names, training touches only adapters and heads, export merges into plain transformers
weights with the same features, and resuming is exact."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    QUICKSTART,
    TEXTS,
    TINY_OPEN_CLIP,
    embeddings,
    pixels,
    save_clip,
    train_stopped_and_resumed,
)
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel

from mmcontrast.config import ConfigError, TowerConfig, load_recipe
from mmcontrast.eval.adapters.base import features_of
from mmcontrast.hub.export import export
from mmcontrast.methods import build_method, load_trained
from mmcontrast.methods.base import Method
from mmcontrast.models.lora import (
    LoraSettings,
    apply_lora,
    default_targets,
    has_adapters,
    merge_adapters,
)
from mmcontrast.models.tower import build_tower
from mmcontrast.pipeline import train
from mmcontrast.train.checkpoint import save_weights

CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return save_clip(tmp_path_factory.mktemp("lora") / "clip", tokenizer_dir)


def method_from(*overrides: str) -> Method:
    return build_method(load_recipe(None, list(overrides))).eval()


def linears(module: nn.Module, targets: list[str]) -> list[nn.Linear]:
    return [
        m
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    ]


def test_only_adapters_and_heads_train(tiny_run: list[str]) -> None:
    method = method_from(*tiny_run, "model.vision.lora={rank: 4}")
    dual = method.trained_model()
    vision = {n: p for n, p in dual.vision.named_parameters() if p.requires_grad}
    assert vision and all(".lora_A." in n or ".lora_B." in n for n in vision)
    # r * (in + out) per adapted layer, for the HF ViT's default targets
    base = method_from(*tiny_run).trained_model().vision
    adapted = linears(base, default_targets(base, "x"))
    assert len(adapted) == 2 * 6  # 2 layers x q k v out fc1 fc2
    assert sum(p.numel() for p in vision.values()) == sum(
        4 * (m.in_features + m.out_features) for m in adapted
    )
    assert all(p.requires_grad for p in dual.text.parameters())  # no lora there: trains whole
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert {"model.logit_scale", "model.vision_projection.weight"} <= trainable

    dora = method_from(*tiny_run, "model.text.lora={rank: 2, dora: true}").trained_model().text
    names = [n for n, p in dora.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names)
    assert all("lora_" in n for n in names)


def test_starts_as_the_base_model(clip_dir: Path) -> None:
    """lora_B starts at zero: an init_from CLIP with adapters embeds exactly as without."""
    lora = "{rank: 4, alpha: 8, dora: true}"
    base = embeddings(method_from(f"model.init_from={clip_dir}"))
    adapted = method_from(
        f"model.init_from={clip_dir}", f"model.vision.lora={lora}", f"model.text.lora={lora}"
    )
    dual = adapted.trained_model()
    assert has_adapters(dual.vision) and has_adapters(dual.text)
    for got, want in zip(embeddings(adapted), base, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_bad_settings_are_refused(tiny_run: list[str]) -> None:
    with pytest.raises(ConfigError, match="rank") as info:
        method_from(*tiny_run, "model.vision.lora={rnak: 4}")
    assert "model.vision.lora.rnak" in str(info.value)
    with pytest.raises(ValueError, match="at least 1"):
        method_from(*tiny_run, "model.vision.lora={rank: 0}")
    with pytest.raises(ValueError, match="'query_proj' matches no layer.*q_proj"):
        method_from(*tiny_run, "model.vision.lora={target_modules: [query_proj]}")
    with pytest.raises(ValueError, match="unlocked_layers"):
        method_from(
            *tiny_run,
            "model.vision.lock=true",
            "model.vision.unlocked_layers=1",
            "model.vision.lora={}",
        )
    cached = ["model.vision.lock=true", "train.cache_locked_features=true", "model.vision.lora={}"]
    with pytest.raises(ValueError, match="fully locked vision tower.*no lora"):
        method_from(*tiny_run, *cached).train_data()
    with pytest.raises(ValueError, match="no default for Sequential.*list the layers"):
        default_targets(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)), "x.lora")


@pytest.mark.parametrize("modality", ["vision", "text"])
def test_open_clip_packed_attention(tmp_path: Path, modality: str) -> None:
    """open_clip's MultiheadAttention (q, k, v packed in in_proj_weight) is adapted whole;
    merged, the tower gives the adapted outputs with the plain tower's keys."""
    path = tmp_path / "tiny-oc.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP))
    torch.manual_seed(0)
    plain = build_tower(TowerConfig(source="open_clip", name=str(path), pretrained=False), modality)
    cfg = TowerConfig(source="open_clip", name=str(path), pretrained=False, lora={"rank": 2})
    torch.manual_seed(0)  # the same base weights
    tower = build_tower(cfg, modality)
    trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert any(".attn.lora_A" in n for n in trainable)  # the packed q, k, v projection
    inputs = (
        {"pixel_values": pixels()}
        if modality == "vision"
        else tower.tokenizer()(["a red circle", "the big blue square"])
    )
    tower.eval()
    with torch.no_grad():
        torch.testing.assert_close(tower(**inputs), plain.eval()(**inputs))  # B starts at zero
        for name, param in tower.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # as if trained
    out = tower(**inputs)
    out.square().sum().backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in tower.named_parameters()
        if "lora_" in n
    )
    with torch.no_grad():
        out = tower(**inputs)
        assert not torch.allclose(out, plain(**inputs), atol=1e-4)
        assert merge_adapters(tower) > 0 and not has_adapters(tower)
        assert tower.state_dict().keys() == plain.state_dict().keys()
        torch.testing.assert_close(tower(**inputs), out, atol=1e-5, rtol=1e-5)


def test_timm_tower() -> None:
    overrides = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    cfg = TowerConfig(source="timm", name="vit_tiny_patch16_224", pretrained=False)
    cfg.config_overrides = overrides
    cfg.lora = {"rank": 2}
    tower = build_tower(cfg, "vision")
    trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 2 * 4  # A and B x 2 blocks x qkv proj fc1 fc2
    assert all(".lora_" in n for n in trainable)


def test_timm_vit_defaults_and_merge() -> None:
    timm = pytest.importorskip("timm")
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, depth=1
    ).eval()
    assert default_targets(vit, "x") == ["qkv", "attn.proj", "fc1", "fc2"]
    adapted = copy.deepcopy(vit)
    apply_lora(adapted, LoraSettings(rank=2), "x")
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_()  # as if trained
        out = adapted(pixels())
        assert not torch.allclose(out, vit(pixels()))
        assert merge_adapters(adapted) == 4
        assert not has_adapters(adapted) and adapted.state_dict().keys() == vit.state_dict().keys()
        torch.testing.assert_close(adapted(pixels()), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dora", [False, True])
def test_trains_adapters_only_and_exports_merged(
    clip_dir: Path, shapes_dir: Path, tmp_path: Path, dora: bool
) -> None:
    run = tmp_path / "run"
    lora = f"{{rank: 4, dora: {str(dora).lower()}}}"
    train(
        load_recipe(
            None,
            [
                f"model.init_from={clip_dir}",
                f"model.vision.lora={lora}",
                "model.text.lock=true",
                f"data.path={shapes_dir}",
                f"train.output_dir={run}",
                "train.batch_size=8",
                "train.max_steps=3",
                "train.lr=1e-2",
                "train.warmup_steps=0",
                "train.progress_bar=false",
                "train.trackers=[]",
                "eval.at_end=false",
            ],
        )
    )
    start = method_from(f"model.init_from={clip_dir}").state_dict()
    trained = load_file(str(run / "model.safetensors"))
    adapters = {k for k in trained if ".lora_" in k}
    assert adapters and all(k.startswith("model.vision.") for k in adapters)
    changed = set()
    for key, value in trained.items():
        if key in adapters:
            continue
        before = start[key.replace(".base_layer.", ".")]
        if not torch.equal(value, before):
            changed.add(key)
    # the base weights of both towers are as they started; the heads moved
    assert changed - {"model.logit_scale"} == {
        "model.vision_projection.weight",
        "model.text_projection.weight",
    }
    assert any(trained[k].abs().sum() > 0 for k in adapters if ".lora_B." in k)  # it trained

    reloaded = load_trained(run)  # rebuilt with the adapters from config.yaml
    assert has_adapters(reloaded.trained_model().vision)
    image, text = embeddings(reloaded)

    export(run, tmp_path / "export")
    assert has_adapters(load_trained(run).trained_model().vision)  # the run keeps its adapters
    assert any(".lora_" in k for k in load_file(str(run / "model.safetensors")))
    exported, info = AutoModel.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert type(exported).__name__ == "CLIPModel"
    assert not any(info.values())  # plain keys: nothing missing, unexpected or mismatched
    assert not any("lora" in k for k in exported.state_dict())
    tokens = reloaded.trained_model().tokenize(TEXTS)
    with torch.no_grad():
        theirs_image = F.normalize(
            features_of(exported.eval().get_image_features(pixels())), dim=-1
        )
        theirs_text = F.normalize(features_of(exported.get_text_features(**tokens)), dim=-1)
    torch.testing.assert_close(theirs_image, image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs_text, text, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # three short trainings: about 30 s on 2 cores
def test_resume_is_exact(tiny_run: list[str], tmp_path: Path) -> None:
    common = [
        *tiny_run,
        "model.vision.weights=null",
        "model.vision.lock=false",
        "model.vision.lora={rank: 4, dropout: 0.1}",
        "model.text.lora={rank: 2, dora: true}",
        "train.cache_locked_features=false",
        "train.max_steps=4",
        "train.warmup_steps=0",
        "train.checkpoint_every=2",
        "train.lr=1e-2",
        "eval.at_end=false",
    ]
    full, first, second = train_stopped_and_resumed(QUICKSTART, common, tmp_path, 2)
    assert second["step"] == 4
    losses = [h["loss"] for h in full["history"]]
    assert [h["loss"] for h in first["history"] + second["history"]] == losses
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert any(".lora_B." in k for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("format", ["auto", "mmcontrast"])
def test_vit_bert_export_merges(tiny_run: list[str], tmp_path: Path, format: str) -> None:
    """ViT + BERT with adapters -> a plain VisionTextDualEncoderModel (or mmcontrast format
    without ``lora``) with the adapted model's features."""
    run = tmp_path / "run"
    cfg = load_recipe(
        None,
        [
            *tiny_run,
            f"train.output_dir={run}",
            "model.vision.weights=null",
            "model.vision.lora={rank: 4}",
            "model.text.lora={rank: 2, dora: true}",
            "model.text.pooling=pooler",  # a VisionTextDualEncoderModel's
        ],
    )
    torch.manual_seed(0)
    method = build_method(cfg)
    with torch.no_grad():
        for param in method.parameters():
            if param.requires_grad:  # as if trained: adapters, heads
                param.add_(0.1 * torch.randn_like(param))
    save_weights(method, cfg, run)
    image, text = embeddings(load_trained(run))

    result = export(run, tmp_path / "export", format=format)
    if format == "auto":
        assert result.kind == "vision-text-dual-encoder", result.reason
        model = AutoModel.from_pretrained(tmp_path / "export").eval()
        tokens = method.trained_model().tokenize(TEXTS)
        with torch.no_grad():
            theirs = (model.get_image_features(pixels()), model.get_text_features(**tokens))
        theirs = tuple(F.normalize(features_of(t), dim=-1) for t in theirs)
    else:
        assert load_recipe(tmp_path / "export" / "config.yaml").model.text.lora is None
        exported = load_trained(tmp_path / "export")
        assert not has_adapters(exported)
        theirs = embeddings(exported)
    torch.testing.assert_close(theirs[0], image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs[1], text, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(
        image, embeddings(method_from(*tiny_run, "model.vision.weights=null"))[0]
    )
