"""Speed and memory options: gradient checkpointing per tower, and torch.compile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import QUICKSTART, TINY_BERT, TINY_OPEN_CLIP, TINY_VIT, flow
from safetensors.torch import load_file
from torch import nn

from mmcontrast.config import TowerConfig, load_recipe
from mmcontrast.models import build_tower
from mmcontrast.pipeline import train

DROPOUT = {"hidden_dropout_prob": 0.2, "attention_probs_dropout_prob": 0.2}


def tower_config(kind: str, tmp_path: Path, tokenizer_dir: Path) -> tuple[TowerConfig, str]:
    """A tiny tower config of each family, with the layer class checkpointing wraps."""
    if kind == "hf-vit":
        return TowerConfig(source="hf", name="vit", pretrained=False, config_overrides={**TINY_VIT, **DROPOUT}), "ViTLayer"  # fmt: skip
    if kind == "hf-bert":
        overrides = {**TINY_BERT, **DROPOUT}
        return TowerConfig(source="hf", name="bert", pretrained=False, tokenizer=str(tokenizer_dir), config_overrides=overrides), "BertLayer"  # fmt: skip
    if kind == "timm":
        overrides = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "drop_rate": 0.2}  # fmt: skip
        return TowerConfig(source="timm", name="vit_tiny_patch16_224", pretrained=False, config_overrides=overrides), "Block"  # fmt: skip
    path = tmp_path / "tiny-oc.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP))
    return TowerConfig(source="open_clip", name=str(path), pretrained=False), (
        "ResidualAttentionBlock"
    )


def gradients(tower: nn.Module, inputs: dict[str, torch.Tensor], layer: str) -> tuple[dict, int]:
    """Parameter gradients of one backward pass, and how often a ``layer`` block ran
    (counted at its MLP's first linear map: recomputation may call the block's ``forward``,
    and attention modules may not call their linear maps as modules)."""
    calls = [0]
    block = next(m for m in tower.modules() if type(m).__name__ == layer)
    linear = next(
        m for n, m in block.named_modules() if isinstance(m, nn.Linear) and "attn" not in n
    )
    hook = linear.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    tower.train()
    torch.manual_seed(3)
    tower(**inputs).square().sum().backward()
    hook.remove()
    grads = {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}
    tower.zero_grad(set_to_none=True)
    return grads, calls[0]


@pytest.mark.parametrize(
    "kind", ["hf-vit", "hf-bert", "timm", "open_clip-vision", "open_clip-text"]
)
def test_gradient_checkpointing_recomputes_and_keeps_gradients(
    kind: str, tmp_path: Path, tokenizer_dir: Path
) -> None:
    cfg, layer = tower_config(kind, tmp_path, tokenizer_dir)
    modality = "text" if kind.endswith(("bert", "text")) else "vision"
    torch.manual_seed(0)
    tower = build_tower(cfg, modality)
    if modality == "vision":
        inputs = {"pixel_values": torch.randn(3, 3, 32, 32)}
    else:
        inputs = dict(tower.tokenizer()(["a red circle", "the blue star", "a big shape"]))
    plain, plain_calls = gradients(tower, inputs, layer)
    tower.enable_gradient_checkpointing()
    checkpointed, calls = gradients(tower, inputs, layer)
    assert (plain_calls, calls) == (1, 2)  # the block ran again during backward
    assert plain.keys() == checkpointed.keys() and len(plain) > 4
    for name in plain:  # the same dropout masks in the recomputation: the same gradients
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_from_the_recipe_and_refused_where_unsupported(
    tokenizer_dir: Path,
) -> None:
    cfg = TowerConfig(source="hf", name="vit", pretrained=False, config_overrides=TINY_VIT)
    cfg.gradient_checkpointing = True
    model = build_tower(cfg, "vision").model
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    small = TowerConfig(source="builtin", name="resnet_small", pretrained=False)
    small.gradient_checkpointing = True
    with pytest.raises(ValueError, match="gradient_checkpointing: .* do not support it"):
        build_tower(small, "vision")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_compile_trains_like_eager(tiny_run: list[str], tmp_path: Path, lora: bool) -> None:
    """``train.compile`` (regional, aot_eager backend: no C++ compiler needed in CI) runs
    compiled blocks and trains like eager without dropout; the saved weights have plain keys."""
    from accelerate.state import AcceleratorState
    from torch._dynamo.utils import counters

    no_dropout = flow(
        {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    )
    common = [
        *tiny_run,
        f"model.text.config_overrides={no_dropout}",
        "model.vision.weights=null",
        "model.vision.lock=false",
        "train.cache_locked_features=false",
        "train.max_steps=3",
        "eval.at_end=false",
        *(["model.text.lora={rank: 2}"] if lora else []),
    ]
    eager = train(load_recipe(QUICKSTART, [*common, f"train.output_dir={tmp_path / 'eager'}"]))
    AcceleratorState._reset_state(reset_partial_state=True)  # a new dynamo plugin
    counters.clear()
    compiled = train(
        load_recipe(
            QUICKSTART,
            [
                *common,
                f"train.output_dir={tmp_path / 'compiled'}",
                "train.compile=true",
                "train.compile_backend=aot_eager",
            ],
        )  # fmt: skip
    )
    assert counters["stats"]["unique_graphs"] >= 4  # layers of both towers were compiled
    for a, b in zip(eager["history"], compiled["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    x = load_file(str(tmp_path / "eager" / "model.safetensors"))
    y = load_file(str(tmp_path / "compiled" / "model.safetensors"))
    assert x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=1e-5) for k in x)


def test_sync_batchnorm_converts_for_several_gpu_processes_only() -> None:
    from mmcontrast.methods import build_method
    from mmcontrast.train.loop import sync_batchnorm

    recipe = QUICKSTART.parent / "byol-imagenet-resnet50.yaml"
    cfg = load_recipe(recipe, ["model.vision.pretrained=false"])
    assert cfg.train.sync_batchnorm
    method = build_method(cfg)
    batch_norms = sum(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in method.modules())
    assert batch_norms > 50  # ResNet-50, projector, predictor and the EMA target's copies
    assert sync_batchnorm(method, cfg, 1, torch.device("cuda")) is method  # one process
    with pytest.raises(ValueError, match="needs GPUs"):
        sync_batchnorm(method, cfg, 2, torch.device("cpu"))
    converted = sync_batchnorm(method, cfg, 2, torch.device("cuda"))  # converts on CPU memory
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == batch_norms
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in converted.modules())


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_optimizer_gives_the_same_updates(name: str) -> None:
    from mmcontrast.config import TrainConfig
    from mmcontrast.train.optim import build_optimizer

    weights = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        cfg = TrainConfig(optimizer=name, fused_optimizer=fused, lr=0.05, weight_decay=0.1)
        optimizer = build_optimizer(model, cfg)
        assert optimizer.defaults.get("fused") is (True if fused else None)
        for _ in range(5):
            model(torch.randn(4, 8)).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_sgd_with_a_parameter_whose_first_gradient_comes_later(fused: bool) -> None:
    """Frozen-at-first parameters (SwAV's prototypes, DINO's last layer) get their first
    gradient after some steps: fused SGD must take it, as the plain kernel does."""
    from mmcontrast.config import TrainConfig
    from mmcontrast.train.optim import build_optimizer

    torch.manual_seed(0)
    first, late = nn.Linear(4, 4), nn.Linear(4, 2)
    model = nn.Sequential(first, late)
    cfg = TrainConfig(optimizer="sgd", fused_optimizer=fused, lr=0.1, weight_decay=0.0)
    optimizer = build_optimizer(model, cfg)
    before = late.weight.detach().clone()
    for step in range(3):
        out = late(first(torch.randn(2, 4)) if step else first(torch.randn(2, 4)).detach())
        out.square().sum().backward()
        if step == 0:
            assert late.weight.grad is not None and first.weight.grad is None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert not torch.equal(late.weight, before)


def test_fixed_lr_groups_keep_their_rate_through_the_schedule() -> None:
    """``Method.fixed_lr_prefixes`` (SimSiam's predictor): warm-up and decay pass them by."""
    from mmcontrast.config import TrainConfig
    from mmcontrast.train.optim import build_optimizer, cosine_schedule

    model = nn.ModuleDict({"backbone": nn.Linear(4, 4), "predictor": nn.Linear(4, 4)})
    cfg = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.0, fused_optimizer=False)
    optimizer = build_optimizer(model, cfg, fixed_lr_prefixes=("predictor.",))
    fixed = [g["fixed_lr"] if "fixed_lr" in g else False for g in optimizer.param_groups]
    in_fixed = {
        id(p) for g, f in zip(optimizer.param_groups, fixed, strict=True) if f for p in g["params"]
    }
    assert in_fixed == {id(p) for p in model["predictor"].parameters()}
    scheduler = cosine_schedule(optimizer, warmup_steps=2, total_steps=10)
    rates = []
    for _ in range(9):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for i, f in enumerate(fixed):
        column = [r[i] for r in rates]
        if f:
            assert column == [0.1] * 9
        else:
            assert column[0] < 0.1 and column[2] == pytest.approx(0.1) and column[-1] < 0.02


def test_weight_decay_follows_a_cosine_to_its_end() -> None:
    """``train.weight_decay_end`` (DINO): groups with weight decay go from their rate to the
    end along a half cosine; biases and norms stay at 0; LARS refuses an end of 0."""
    from mmcontrast.config import TrainConfig
    from mmcontrast.train.optim import build_optimizer, weight_decay_schedule

    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    cfg = TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.04, fused_optimizer=False)
    optimizer = build_optimizer(model, cfg)
    decays = sorted(g["weight_decay"] for g in optimizer.param_groups)
    assert decays == [0.0, 0.04]
    apply = weight_decay_schedule(optimizer, total_steps=10, end=0.4)
    for step, value in [(0, 0.04), (5, 0.22), (10, 0.4), (12, 0.4)]:
        assert apply(step) == pytest.approx(value)
        assert sorted(g["weight_decay"] for g in optimizer.param_groups) == pytest.approx(
            [0.0, value]
        )
    assert apply(3) < apply(4) < apply(7)  # rises monotonically
    lars = build_optimizer(model, TrainConfig(optimizer="lars", lr=0.1, weight_decay=1e-4))
    with pytest.raises(ValueError, match="lars"):
        weight_decay_schedule(lars, total_steps=10, end=0.0)
    with pytest.raises(ValueError, match="weight_decay_end"):
        weight_decay_schedule(optimizer, total_steps=10, end=-1.0)


def test_trainable_summary_counts_locked_and_shared_parameters() -> None:
    from torch import nn

    from mmcontrast.train.loop import trainable_summary

    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2))  # 110 + 22 parameters
    model[0].requires_grad_(False)
    model.append(model[1])  # the same layer again: counted once
    assert trainable_summary(model) == "trainable parameters: 22 of 132 (16.67%)"
