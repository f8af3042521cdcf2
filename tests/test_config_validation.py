"""Values out of range are refused at load, naming the key; the schedule check of the loop."""

from __future__ import annotations

import dataclasses
import logging
import typing
from pathlib import Path

import pytest

from mmcontrast import config as config_module
from mmcontrast.config import (
    RANGES,
    Config,
    ConfigError,
    check_schedule,
    check_values,
    load_recipe,
    save_config,
)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.log_every=0", "train.log_every=0: must be an integer >= 1"),
        ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps=0: must be"),
        ("train.max_steps=-3", "train.max_steps=-3: must be an integer >= 1"),
        ("train.epochs=0", "train.epochs=0: must be an integer >= 1"),
        ("train.warmup_steps=-5", "train.warmup_steps=-5: must be an integer >= 0"),
        ("train.batch_size=0", "train.batch_size=0"),
        ("train.stop_at_step=0", "train.stop_at_step=0"),
        ("train.lr=0", "train.lr=0.0: must be a number > 0"),
        ("train.lr=-1e-4", "train.lr=-0.0001"),
        ("train.lr=.nan", "train.lr=nan"),
        ("train.weight_decay=-0.1", "train.weight_decay=-0.1: must be a number >= 0"),
        ("train.betas=[0.9, 1.0]", "train.betas=[0.9, 1.0]: every item must be a number in [0, 1)"),
        ("train.eps=0", "train.eps=0.0"),
        ("train.momentum=1.5", "train.momentum=1.5"),
        ("train.min_lr_ratio=1.5", "train.min_lr_ratio=1.5: must be a number in [0, 1]"),
        ("train.max_grad_norm=-1", "train.max_grad_norm=-1.0"),
        ("train.nonfinite_limit=-1", "train.nonfinite_limit=-1"),
        ("train.checkpoint_every=-2", "train.checkpoint_every=-2"),
        ("train.keep_checkpoints=-1", "train.keep_checkpoints=-1"),
        ("train.ema_decay=1.0", "train.ema_decay=1.0: must be a number in (0, 1)"),
        ("train.ema_decay=0", "train.ema_decay=0.0"),
        ("train.grad_cache_micro_batch=0", "train.grad_cache_micro_batch=0"),
        ("train.seed=-1", "train.seed=-1: must be an integer in [0, 4294967295]"),
        ("data.num_workers=-1", "data.num_workers=-1"),
        ("data.max_train_samples=0", "data.max_train_samples=0"),
        ("data.max_eval_samples=0", "data.max_eval_samples=0"),
        ("data.shuffle_buffer=0", "data.shuffle_buffer=0"),
        ("data.horizontal_flip=2", "data.horizontal_flip=2.0: must be a number in [0, 1]"),
        ("data.color_jitter=-0.1", "data.color_jitter=-0.1"),
        ("data.random_resized_crop=[0.9, 0.5]", "low <= high"),
        ("data.random_resized_crop=[0, 1]", "data.random_resized_crop=[0.0, 1.0]"),
        ("augment.grayscale_prob=1.2", "augment.grayscale_prob=1.2"),
        ("augment.blur_prob=[0.5, -0.5]", "augment.blur_prob=[0.5, -0.5]"),
        ("augment.blur_sigma=[2.0, 0.1]", "augment.blur_sigma=[2.0, 0.1]"),
        ("augment.hue=0.6", "augment.hue=0.6: must be a number in [0, 0.5]"),
        ("augment.local_views=-1", "augment.local_views=-1"),
        ("eval.every=-1", "eval.every=-1"),
        ("eval.batch_size=0", "eval.batch_size=0"),
        ("eval.ks=[0, 5]", "eval.ks=[0, 5]: every item must be an integer >= 1"),
        ("eval.knn_k=[0]", "eval.knn_k=[0]"),
        ("eval.knn_temperature=0", "eval.knn_temperature=0.0"),
        ("model.embed_dim=0", "model.embed_dim=0"),
        ("model.projection_hidden_dim=0", "model.projection_hidden_dim=0"),
        ("model.init_logit_scale=.inf", "model.init_logit_scale=inf: must be a finite number"),
        ("model.vision.lr=0", "model.vision.lr=0.0"),
        ("model.text.lr_decay=1.5", "model.text.lr_decay=1.5: must be a number in (0, 1]"),
        ("model.vision.image_size=0", "model.vision.image_size=0"),
        ("model.vision.image_std=[0.5, 0, 0.5]", "model.vision.image_std=[0.5, 0.0, 0.5]"),
        ("model.text.max_length=0", "model.text.max_length=0"),
        ("model.vision.unlocked_layers=-1", "model.vision.unlocked_layers=-1"),
    ],
)
def test_a_value_out_of_range_is_refused_naming_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(None, [override])
    assert expected in str(info.value)


def test_the_message_says_what_the_key_means() -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(None, ["train.log_every=0"])
    assert str(info.value) == (
        "train.log_every=0: must be an integer >= 1 (optimiser steps between log lines)"
    )


@pytest.mark.parametrize(
    "override",
    [
        "train.checkpoint_every=0",  # as null: only at the end
        "train.max_grad_norm=0",  # as null: no clipping
        "train.max_grad_norm=null",
        "train.keep_checkpoints=0",  # every checkpoint kept
        "eval.every=0",
        "train.ema_decay=0.999",
        "train.min_lr_ratio=1",
        "train.warmup_steps=0",
        "train.max_steps=1",
        "model.vision.lr_decay=1",
        "data.random_resized_crop=[1.0, 1.0]",
        "augment.hue=0.5",
    ],
)
def test_values_at_the_edge_of_their_range_load(override: str) -> None:
    load_recipe(None, [override])


def test_the_defaults_load_and_a_recipe_file_is_checked(tmp_path: Path) -> None:
    check_values(Config())
    assert load_recipe(None) == Config()
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size=0"):
        load_recipe(recipe)


def test_a_config_built_in_code_is_checked() -> None:
    cfg = Config()
    cfg.eval.ks = [1, -5]
    with pytest.raises(ConfigError, match=r"eval\.ks=\[1, -5\]"):
        check_values(cfg)


def test_a_saved_config_still_loads(tmp_path: Path) -> None:
    cfg = load_recipe(None, ["train.checkpoint_every=0", "train.max_grad_norm=null"])
    assert load_recipe(save_config(cfg, tmp_path / "config.yaml")) == cfg


def test_every_range_names_a_numeric_key_of_its_dataclass() -> None:
    classes = {
        name: cls
        for name, cls in vars(config_module).items()
        if isinstance(cls, type) and dataclasses.is_dataclass(cls)
    }
    for (cls_name, key), _ in RANGES.items():
        hints = typing.get_type_hints(classes[cls_name])
        assert key in hints, f"{cls_name}.{key}"
        assert any(t in str(hints[key]) for t in ("int", "float")), f"{cls_name}.{key}"


# --------------------------------------------------------------------------- check_schedule


def test_a_warm_up_shorter_than_the_run_is_fine() -> None:
    cfg = load_recipe(None, ["train.warmup_steps=10"])
    assert check_schedule(cfg, 11) is None


@pytest.mark.parametrize(("warmup", "peak"), [(10, "20%"), (2, "100%")])
def test_a_warm_up_covering_the_run_is_named_with_the_total(warmup: int, peak: str) -> None:
    cfg = load_recipe(None, [f"train.warmup_steps={warmup}"])
    message = check_schedule(cfg, 2)
    assert message is not None
    assert f"train.warmup_steps={warmup} covers the whole run of 2 optimiser steps" in message
    assert f"rises to {peak} of train.lr and never decays" in message
    assert "below 2" in message


def test_the_suggested_warm_up_is_a_twentieth_of_the_run() -> None:
    cfg = load_recipe(None, ["train.warmup_steps=1000"])
    assert "e.g. 50, 5% of the run" in str(check_schedule(cfg, 1000))


def test_a_run_without_steps_is_refused() -> None:
    with pytest.raises(ConfigError, match="0 optimiser steps.*train.epochs=1"):
        check_schedule(Config(), 0)


def test_loading_a_short_run_of_a_long_warm_up_does_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A smoke run of a recipe (max_steps 2, warm-up 10) loads quietly; the loop's
    check_schedule warns once it trains."""
    with caplog.at_level(logging.WARNING):
        load_recipe(None, ["train.max_steps=2", "train.warmup_steps=10"])
    assert not caplog.records
