from pathlib import Path

import pytest

from mmcontrast.config import ConfigError, load_recipe, save_config

RECIPES = sorted(Path(__file__).resolve().parent.parent.joinpath("recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load(recipe: Path) -> None:
    cfg = load_recipe(recipe)
    if cfg.model.init_from:  # the whole model comes from the source: no tower names
        assert not cfg.model.vision.name and not cfg.model.text.name
        return
    assert cfg.model.vision.name
    assert cfg.model.text.name or cfg.method not in ("clip", "image_text")  # vision: no text tower


def test_overrides_are_typed() -> None:
    cfg = load_recipe(
        None,
        [
            "train.lr=3e-4",
            "train.batch_size=16",
            "data.random_resized_crop=[0.5, 1]",
            "model.text.lock=true",
        ],
    )
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.batch_size == 16
    assert cfg.data.random_resized_crop == (0.5, 1.0)
    assert cfg.model.text.lock is True


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr_rate=1", "unknown key 'train.lr_rate'; did you mean 'train.lr'?"),
        ("trian.lr=1", "unknown key 'trian'; did you mean 'train'?"),
        ("model.vison.name=x", "did you mean 'model.vision'?"),
        ("data.caption_colum=x", "did you mean 'data.caption_column'?"),
        ("train.batch_size=abc", "train.batch_size must be an integer"),
        ("model.vision.pooling=maen", "did you mean 'mean'?"),
        ("train.mixed_precision=fp8", "choose from no, fp16, bf16"),
        ("train.lr", "must look like section.key=value"),
    ],
)
def test_errors_name_the_key_and_nearest_valid_one(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_recipe(None, [override])
    assert expected in str(info.value)


def test_yaml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1\n  warmpu_steps: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'train.warmup_steps'"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_recipe(None, ["train.betas=[0.9, 0.95]", "model.vision.config_overrides={a: 1}"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_recipe(path) == cfg
