"""DINO: multi-crop student and EMA teacher, the head, schedules, exact resume with the
center, the Fashion-MNIST recipe, and 2 gloo processes against 1 with the whole batch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import (
    RECIPES,
    WORLD,
    assert_resume_is_exact,
    assert_same_weights,
    run_result,
    tiny_vision_overrides,
    train_in_one_process,
    train_worker,
)
from safetensors.torch import load_file

from mmcontrast.config import load_recipe
from mmcontrast.losses.dino import DINOLoss, update_center
from mmcontrast.methods import build_method
from mmcontrast.methods.dino import DINO
from mmcontrast.models.dino_head import DINOHead
from mmcontrast.models.momentum import cosine_momentum
from mmcontrast.pipeline import train

SMALL_HEAD = [
    "method_args.hidden_dim=32",
    "method_args.bottleneck_dim=16",
    "method_args.out_dim=24",
]


def overrides(data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "method=dino",
        *SMALL_HEAD,
        "method_args.freeze_last_layer_steps=0",
        "augment.local_views=2",
        *tiny_vision_overrides(data, output),
        "eval.knn_k=[3]",
        "eval.batch_size=16",
        *extra,
    ]


def build(data: Path, output: Path, *extra: str) -> DINO:
    method = build_method(load_recipe(None, overrides(data, output, *extra)))
    assert isinstance(method, DINO)
    return method


def a_batch(method: DINO) -> dict:
    dataset, collate = method.train_data()
    return collate([dataset[i] for i in range(8)])


def test_one_step_trains_the_student_and_the_teacher_follows(
    labelled_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    method = build(labelled_dir, tmp_path)
    batch = a_batch(method)
    assert [tuple(v.shape[-2:]) for v in batch["views"]] == [(16, 16)] * 2 + [(8, 8)] * 2
    before = {k: v.detach().clone() for k, v in method.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    out = method(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert float(out["teacher_temperature"]) == pytest.approx(0.04)
    out["loss"].backward()
    teacher = [n for n, p in method.named_parameters() if n.startswith("teacher.")]
    frozen = {n for n, p in method.named_parameters() if not p.requires_grad}
    # the teacher and the prototypes' weight-norm gain (norm_last_layer) are never trained
    assert frozen == {*teacher, "head.last_layer.weight_g"}
    assert all(p.grad is None for p in method.parameters() if not p.requires_grad)
    assert method.head.last_layer.weight_v.grad is not None
    optimizer.step()
    method.after_optimizer_step(1, 10)
    after = method.state_dict()
    for prefix in ("backbone.", "head.mlp.", "teacher.backbone.", "teacher.head."):
        keys = [k for k in after if k.startswith(prefix) and k.endswith("weight")]
        assert any(not torch.equal(before[k], after[k]) for k in keys), f"{prefix} did not move"
    assert not torch.equal(before["center"], after["center"])
    weight = method.head.last_layer.weight()
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(24))  # unit prototypes
    assert method.trained_model() is method.teacher.backbone  # the paper evaluates the teacher


def test_the_forward_is_the_loss_of_the_student_and_teacher_views(
    labelled_dir: Path, tmp_path: Path
) -> None:
    """The teacher sees the 2 global views, the student all 4; the center updates after."""
    torch.manual_seed(0)
    method = build(labelled_dir, tmp_path)
    batch = a_batch(method)
    seen: list[tuple[int, ...]] = []
    method.teacher.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        center = torch.randn(24)
        method.center.copy_(center)
        out = method(batch)
        assert seen == [(16, 3, 16, 16)]  # the 2 global views of the batch, at once
        # BatchNorm in training mode: the same groups as DINO's multi-crop wrapper
        g, local = torch.cat(batch["views"][:2]), torch.cat(batch["views"][2:])
        features = torch.cat([method.backbone(pixel_values=x) for x in (g, local)])
        student = list(method.head(features).split(8))
        teacher = list(method.teacher(g).split(8))
    expected = DINOLoss(0.1, 0.04)(student, teacher, center)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(method.center, update_center(center, teacher, 0.9))


def test_the_last_layer_is_frozen_then_trained(labelled_dir: Path, tmp_path: Path) -> None:
    method = build(labelled_dir, tmp_path, "method_args.freeze_last_layer_steps=2")
    batch = a_batch(method)
    method(batch)["loss"].backward()
    assert method.head.last_layer.weight_v.grad is None  # None: the optimiser skips it
    assert method.head.mlp[0].weight.grad is not None  # the rest of the head trains
    method.after_optimizer_step(2, 10)
    method(batch)["loss"].backward()
    assert method.head.last_layer.weight_v.grad is not None


def test_norm_last_layer_false_trains_the_gain(labelled_dir: Path, tmp_path: Path) -> None:
    method = build(labelled_dir, tmp_path, "method_args.norm_last_layer=false")
    method(a_batch(method))["loss"].backward()
    assert method.head.last_layer.weight_g.grad is not None


def test_head_shapes_batch_norm_and_errors() -> None:
    head = DINOHead(12, 40, hidden_dim=20, bottleneck_dim=8, layers=3, batch_norm=True)
    kinds = [type(m).__name__ for m in head.mlp]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear"]
    assert head(torch.randn(5, 12)).shape == (5, 40)
    assert [type(m).__name__ for m in DINOHead(12, 40, layers=1).mlp] == ["Linear"]
    # unit prototypes and a unit bottleneck: every output is a cosine
    assert DINOHead(12, 40, hidden_dim=20, bottleneck_dim=8)(torch.randn(5, 12)).abs().max() <= 1
    with pytest.raises(ValueError, match="layers >= 1"):
        DINOHead(12, 40, layers=0)


def test_schedules(labelled_dir: Path, tmp_path: Path) -> None:
    method = build(
        labelled_dir,
        tmp_path,
        "method_args.warmup_teacher_temperature_steps=10",
        "loss.kwargs={teacher_temperature: 0.06}",  # the loss's value ends the warm-up
    )
    temps = [method.teacher_temperature(s) for s in (0, 5, 10, 50)]
    assert temps == pytest.approx([0.04, 0.05, 0.06, 0.06])
    assert build(labelled_dir, tmp_path).teacher_temperature(0) == pytest.approx(0.04)
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    no_warmup = build(labelled_dir, tmp_path, "method_args.warmup_teacher_temperature_steps=0")
    assert no_warmup.teacher_temperature(0) == pytest.approx(0.07)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method_args.center_momentum=1.0", "center_momentum"),
        ("method_args.base_momentum=1.5", "base_momentum"),
        ("method_args.freeze_last_layer_steps=-1", "freeze_last_layer_steps"),
        ("method_args.warmup_teacher_temperature=0", "warmup_teacher_temperature"),
        ("method_args.student_temperature=0", "student_temperature"),
        ("loss.name=swav", "trains with loss 'dino'"),
    ],
)
def test_bad_settings_are_clear(
    labelled_dir: Path, tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build(labelled_dir, tmp_path, override)


def test_the_fashion_mnist_recipe_trains_a_few_steps(labelled_dir: Path, tmp_path: Path) -> None:
    cfg = load_recipe(
        RECIPES / "dino-fashion-mnist.yaml",
        [
            "model.vision.image_size=16",
            f"data.path={labelled_dir}",
            f"train.output_dir={tmp_path}",
            "train.batch_size=8",
            "train.max_steps=3",
            "train.warmup_steps=1",
            "train.log_every=1",
            "train.progress_bar=false",
            "train.trackers=[]",
            "data.num_workers=0",
            "augment.batched=false",  # the recipe batches views of in-memory Fashion-MNIST
            "eval.knn_k=[3]",
            "eval.linear_probe=false",
            "eval.views_png=false",
        ],
    )
    summary = train(cfg)
    assert "knn3_acc1" in summary["eval"]  # the teacher's backbone, evaluated
    history = summary["history"]
    assert len(history) == 3 and all(math.isfinite(h["loss"]) for h in history)
    assert history[0]["teacher_temperature"] == pytest.approx(0.04)
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert weights["center"].shape == (4096,) and weights["center"].abs().sum() > 0


@pytest.mark.slow
def test_resume_is_exact_with_teacher_and_center(labelled_dir: Path, tmp_path: Path) -> None:
    """Stop mid-epoch and resume: same losses and weights, the teacher and center included,
    with the last layer unfrozen, the teacher temperature warming up and the weight decay
    following its cosine across the stop."""
    common = [
        *overrides(labelled_dir, tmp_path),
        "method_args.freeze_last_layer_steps=4",
        "method_args.warmup_teacher_temperature_steps=6",
        "train.weight_decay=0.04",
        "train.weight_decay_end=0.4",
    ]
    history, a = assert_resume_is_exact(common, tmp_path)
    decays = [h["weight_decay"] for h in history]  # the rate of the step after each
    expected = [0.4 - 0.36 * (1 + math.cos(math.pi * s / 8)) / 2 for s in range(1, 9)]
    assert decays == pytest.approx(expected, rel=1e-6)
    split = [json.loads(line) for line in (tmp_path / "split" / "history.jsonl").open()]
    assert [h["weight_decay"] for h in split] == decays
    assert any(k.startswith("teacher.") for k in a) and a["center"].abs().sum() > 0


# ------------------------------------------------------------------ 2 processes vs 1

B = 4
VIT = "{img_size: 16, patch_size: 4, embed_dim: 16, depth: 1, num_heads: 2, dynamic_img_size: true}"


def vit_run(labelled: Path, batch: int) -> list[str]:
    """DINO on a tiny timm ViT (no BatchNorm anywhere: the batch split cannot change the
    statistics), multi-crop, SGD without clipping; the last layer unfrozen after step 1."""
    return [
        "method=dino",
        *SMALL_HEAD,
        "method_args.freeze_last_layer_steps=1",
        "method_args.warmup_teacher_temperature_steps=2",
        "augment.local_views=2",
        "model.vision.source=timm",
        "model.vision.name=vit_tiny_patch16_224",
        "model.vision.pretrained=false",
        f"model.vision.config_overrides={VIT}",
        "model.vision.image_size=16",
        f"data.path={labelled}",
        "data.max_train_samples=16",
        f"train.batch_size={batch}",
        "train.max_steps=3",
        "train.warmup_steps=0",
        "train.optimizer=sgd",
        # torch's fused SGD fails on a parameter whose first gradient comes after the first
        # step (the last layer, unfrozen): the per-parameter loop handles it
        "train.fused_optimizer=false",
        "train.lr=0.2",
        "train.max_grad_norm=null",
        "train.progress_bar=false",
        "train.trackers=[]",
        "train.log_every=1",
        "eval.at_end=false",
        "eval.views_png=false",
    ]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_twice_the_batch(
    labelled_16: Path, tmp_path: Path
) -> None:
    """Per-sample losses averaged by DDP, the center from the global batch mean: 2 gloo
    processes x B train as 1 process x 2B (losses, weights, teacher and center)."""
    root = tmp_path / "two"
    root.mkdir()
    cases = {"dino": (None, vit_run(labelled_16, B))}
    mp.spawn(train_worker, args=(cases, str(root)), nprocs=WORLD, join=True)
    losses, weights = train_in_one_process(None, vit_run(labelled_16, 2 * B), tmp_path / "one")
    got_losses, got_weights = run_result(root / "dino")
    assert len(set(losses)) == len(losses) == 3
    assert got_losses == pytest.approx(losses, abs=1e-5, rel=1e-5)
    assert_same_weights(got_weights, weights)
    assert weights["center"].abs().sum() > 0
