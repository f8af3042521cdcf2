"""A run folder whose weights are damaged or of another architecture: an error that names
the file and what is wrong, never a raw safetensors or torch error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, save_model

from mmcontrast.config import load_recipe, save_config
from mmcontrast.methods import build_method, load_trained
from mmcontrast.methods.trained import EMA_FILE, WEIGHTS_FILE, WeightsError

SIMCLR = [
    "method=simclr",
    "method_args={hidden_dim: 16, out_dim: 8}",
    "model.vision.source=builtin",
    "model.vision.name=tiny_cnn",
    "model.vision.image_size=16",
]


def write_run(folder: Path, *overrides: str) -> Path:
    """A run folder (config.yaml + model.safetensors) of a tiny SimCLR."""
    method = build_method(load_recipe(None, [*SIMCLR, *overrides]))
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in method.state_dict().items()}, folder / WEIGHTS_FILE)
    save_config(method.cfg, folder / "config.yaml")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("run"))


def copy_with(run: Path, folder: Path, weights: bytes) -> Path:
    folder.mkdir()
    (folder / "config.yaml").write_text((run / "config.yaml").read_text())
    (folder / WEIGHTS_FILE).write_bytes(weights)
    return folder


def test_a_sound_folder_loads(run: Path) -> None:
    method = load_trained(run)
    assert not method.training


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_weights_name_the_file(run: Path, tmp_path: Path, damage: str) -> None:
    sound = (run / WEIGHTS_FILE).read_bytes()
    weights = {
        "garbage": b"these bytes are no safetensors file" * 8,
        "truncated": sound[: len(sound) // 2],
        "empty": b"",
    }[damage]
    folder = copy_with(run, tmp_path / "damaged", weights)
    with pytest.raises(WeightsError) as info:
        load_trained(folder)
    message = str(info.value)
    assert str(folder / WEIGHTS_FILE) in message
    assert "is not a readable safetensors file" in message
    assert "Copy it again" in message
    assert isinstance(info.value, ValueError)


def test_weights_of_other_shapes_name_the_keys(run: Path, tmp_path: Path) -> None:
    wider = write_run(tmp_path / "wider", "method_args={hidden_dim: 16, out_dim: 4}")
    folder = copy_with(run, tmp_path / "mixed", (wider / WEIGHTS_FILE).read_bytes())
    with pytest.raises(WeightsError) as info:
        load_trained(folder)
    message = str(info.value)
    assert f"{folder / WEIGHTS_FILE} does not fit the model its config builds" in message
    assert "have another shape" in message or "has another shape" in message
    assert "is [4, 16] in the file, [8, 16] in the model" in message
    assert "config.yaml" in message


def test_weights_of_another_backbone_name_missing_and_unexpected_keys(
    run: Path, tmp_path: Path
) -> None:
    other = write_run(tmp_path / "other", "model.vision.name=resnet_small")
    folder = copy_with(run, tmp_path / "mixed", (other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(WeightsError) as info:
        load_trained(folder)
    message = str(info.value)
    assert "the file lacks" in message and "backbone.model." in message
    assert "the model has not" in message
    assert "and " in message and " more" in message  # a few keys named, the rest counted


def test_a_damaged_moving_average_names_its_file(run: Path, tmp_path: Path) -> None:
    folder = copy_with(run, tmp_path / "ema", (run / WEIGHTS_FILE).read_bytes())
    (folder / EMA_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match=f"{EMA_FILE} is not a readable safetensors file"):
        load_trained(folder)


def test_a_moving_average_of_another_model_names_its_keys(run: Path, tmp_path: Path) -> None:
    folder = copy_with(run, tmp_path / "ema", (run / WEIGHTS_FILE).read_bytes())
    save_model(torch.nn.Linear(2, 3), str(folder / EMA_FILE))
    with pytest.raises(WeightsError) as info:
        load_trained(folder)
    assert f"{folder / EMA_FILE} does not fit" in str(info.value)
    assert "it holds 2 keys the model has not (bias, weight)" in str(info.value)
