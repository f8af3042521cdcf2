"""The vision recipes: one step of every method, momentum targets, queues, resume, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import (
    RECIPES,
    assert_resume_is_exact,
    tiny_vision_overrides,
)

from mmcontrast.config import ConfigError, load_recipe
from mmcontrast.methods import build_method
from mmcontrast.models.momentum import cosine_momentum, ema_update, frozen_copy
from mmcontrast.pipeline import train

METHODS = ["simclr", "moco_v2", "moco_v3", "byol", "swav", "barlow_twins", "supcon"]
SMALL_HEADS = {
    "simclr": ["method_args.hidden_dim=32", "method_args.out_dim=16"],
    "moco_v2": ["method_args.hidden_dim=32", "method_args.out_dim=16", "method_args.queue_size=24"],
    "moco_v3": ["method_args.hidden_dim=32", "method_args.out_dim=16"],
    "byol": ["method_args.hidden_dim=32", "method_args.out_dim=16"],
    "swav": [
        "method_args.hidden_dim=32",
        "method_args.out_dim=16",
        "method_args.prototypes=10",
        "method_args.freeze_prototypes_steps=0",
        "augment.local_views=2",
    ],
    "barlow_twins": ["method_args.projector_dims=[32, 32]"],
    "supcon": ["method_args.hidden_dim=32", "method_args.out_dim=16"],
}


def overrides(method: str, data: Path, output: Path) -> list[str]:
    return [
        f"method={method}",
        *SMALL_HEADS[method],
        *tiny_vision_overrides(data, output),
        "eval.knn_k=[3]",
        "eval.batch_size=16",
    ]


def build(method: str, data: Path, output: Path, extra: list[str] = ()):  # type: ignore[assignment]
    cfg = load_recipe(None, [*overrides(method, data, output), *extra])
    return cfg, build_method(cfg)


@pytest.mark.parametrize("name", METHODS)
def test_one_step_of_every_method(name: str, labelled_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg, method = build(name, labelled_dir, tmp_path)
    dataset, collate = method.train_data()
    batch = collate([dataset[i] for i in range(8)])
    views = 4 if name == "swav" else 2
    assert len(batch["views"]) == views and batch["labels"].shape == (8,)
    assert batch["views"][0].shape == (8, 3, 16, 16)
    if name == "swav":
        assert batch["views"][2].shape[-1] < 16  # low-resolution crops
    before = {k: v.detach().clone() for k, v in method.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    out = method(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    frozen = [n for n, p in method.named_parameters() if not p.requires_grad]
    assert all(p.grad is None for p in method.parameters() if not p.requires_grad)
    optimizer.step()
    method.after_optimizer_step(1, 10)
    after = method.state_dict()
    backbone = [k for k in after if k.startswith("backbone.") and "weight" in k]
    assert any(not torch.equal(before[k], after[k]) for k in backbone), "backbone did not move"
    if name in ("moco_v2", "moco_v3", "byol"):
        assert frozen, "the momentum target must not be trained by the optimiser"
        moved = [k for k in frozen if not torch.equal(before[k], after[k])]
        assert moved, "the momentum target did not follow the online network"
    else:
        assert not frozen
    assert (tmp_path / "views.png").is_file()


def test_momentum_schedule_and_ema() -> None:
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    online = torch.nn.Linear(3, 2)
    target = frozen_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        online.weight.add_(1.0)
    expected = 0.9 * target.weight + 0.1 * online.weight
    ema_update(target, online, 0.9)
    torch.testing.assert_close(target.weight, expected)


def test_moco_queue_wraps_around(labelled_dir: Path, tmp_path: Path) -> None:
    _, method = build("moco_v2", labelled_dir, tmp_path)  # queue of 24 keys, batches of 8
    keys = [torch.full((8, 16), float(i)) for i in range(4)]
    for k in keys:
        method._enqueue(k)
    assert int(method.queue_ptr) == 8  # 32 keys into 24 slots
    assert torch.equal(method.queue[:8], keys[3]) and torch.equal(method.queue[8:16], keys[1])


def test_moco_queue_must_tile_the_batch(labelled_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of"):
        build("moco_v2", labelled_dir, tmp_path, ["method_args.queue_size=20"])


def test_swav_freezes_prototypes_then_trains_them(labelled_dir: Path, tmp_path: Path) -> None:
    _, method = build("swav", labelled_dir, tmp_path, ["method_args.freeze_prototypes_steps=2"])
    dataset, collate = method.train_data()
    batch = collate([dataset[i] for i in range(8)])
    method(batch)["loss"].backward()
    assert method.prototypes.weight.grad is None
    method.after_optimizer_step(2, 10)
    method(batch)["loss"].backward()
    assert method.prototypes.weight.grad is not None
    norms = method.prototypes.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_unknown_method_arg_names_the_nearest(labelled_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'method_args.temperature'"):
        build("simclr", labelled_dir, tmp_path, ["method_args.temprature=0.1"])


def test_wrong_loss_for_the_method_is_clear(labelled_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trains with loss 'ntxent'"):
        build("simclr", labelled_dir, tmp_path, ["loss.name=clip"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["byol", "moco_v2"])
def test_resume_is_exact_with_momentum_state(name: str, labelled_dir: Path, tmp_path: Path) -> None:
    """Stop mid-epoch and resume: same losses and weights, EMA targets and queue included."""
    _, a = assert_resume_is_exact(overrides(name, labelled_dir, tmp_path), tmp_path)
    assert [k for k in a if k.startswith(("target.", "key_encoder.", "queue"))]


def test_training_and_evaluation_from_the_cli_recipe(labelled_dir: Path, tmp_path: Path) -> None:
    cfg = load_recipe(
        RECIPES / "supcon-fashion-mnist.yaml",
        [
            *overrides("supcon", labelled_dir, tmp_path),
            "train.max_steps=3",
            "train.warmup_steps=1",
            "data.num_workers=0",
            "augment.batched=false",  # the recipe batches views of in-memory Fashion-MNIST
        ],
    )
    summary = train(cfg)
    metrics = summary["eval"]
    assert {"knn3_acc1", "lp_acc1", "lp_mean_per_class_recall"} <= set(metrics)
    assert (tmp_path / "eval" / "knn.json").is_file()
    assert (tmp_path / "eval" / "linear.json").is_file()


@pytest.mark.parametrize(
    "path", sorted(RECIPES.glob("*-imagenet-resnet50.yaml")), ids=lambda p: p.stem
)
def test_imagenet_recipes_build(path: Path, tmp_path: Path) -> None:
    """The GPU recipes parse and build their model (no data is read here)."""
    cfg = load_recipe(path, [f"train.output_dir={tmp_path}"])
    method = build_method(cfg)
    assert method.backbone.width == 2048
    assert cfg.train.optimizer in ("sgd", "lars") and cfg.train.mixed_precision == "bf16"


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet_small", "resnet18_cifar"])
def test_builtin_backbones_take_any_size(name: str) -> None:
    from mmcontrast.config import TowerConfig
    from mmcontrast.models.tower import build_tower

    tower = build_tower(TowerConfig(source="builtin", name=name), "vision")
    for size in (16, 28, 32):
        assert tower(pixel_values=torch.randn(2, 3, size, size)).shape == (2, tower.width)


def test_unknown_builtin_backbone_names_the_nearest() -> None:
    from mmcontrast.config import TowerConfig
    from mmcontrast.models.tower import build_tower

    with pytest.raises(ValueError, match="did you mean 'resnet_small'"):
        build_tower(TowerConfig(source="builtin", name="resnet_smal"), "vision")


@pytest.mark.parametrize(("name", "width"), [("resnet18", 512), ("convnext_tiny", 768)])
def test_torchvision_backbones_drop_only_the_classifier(name: str, width: int) -> None:
    from mmcontrast.config import TowerConfig
    from mmcontrast.models.tower import build_tower

    tower = build_tower(TowerConfig(source="torchvision", name=name, pretrained=False), "vision")
    assert tower.width == width
    assert tower(pixel_values=torch.randn(2, 3, 64, 64)).shape == (2, width)


def test_multi_crop_is_refused_outside_swav(labelled_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multi-crop is for swav"):
        build("simclr", labelled_dir, tmp_path, ["augment.local_views=2"])


def test_backbone_learning_rate_reaches_the_optimiser(labelled_dir: Path, tmp_path: Path) -> None:
    from mmcontrast.train.optim import build_optimizer

    cfg, method = build("simclr", labelled_dir, tmp_path, ["model.vision.lr=1e-5"])
    optimizer = build_optimizer(method, cfg.train, method.lr_prefixes())
    rates = {group["lr"] for group in optimizer.param_groups}
    assert rates == {1e-5, cfg.train.lr}
