"""Resuming refuses a config that would not continue the run exactly, and explains a
checkpoint that cannot be loaded, naming the folder and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from mmcontrast.config import ConfigError, load_recipe, save_config
from mmcontrast.train.resume_checks import (
    CheckpointError,
    check_resume,
    check_resume_config,
    explain_load_failure,
    explained_load_errors,
)


def test_another_batch_size_is_refused_naming_the_key() -> None:
    saved = load_recipe(None, ["train.batch_size=8"])
    current = load_recipe(None, ["train.batch_size=16"])
    with pytest.raises(ConfigError) as info:
        check_resume_config(saved, current, Path("run/checkpoints/step-00000004"))
    message = str(info.value)
    assert "cannot resume run/checkpoints/step-00000004 exactly" in message
    assert "train.batch_size: 8 in the checkpoint, 16 now" in message
    assert "resume it with train.batch_size=8" in message
    assert "model.init_from=run/checkpoints/step-00000004" in message


@pytest.mark.parametrize(
    "override",
    [
        "train.gradient_accumulation_steps=2",
        "train.seed=1",
        "data.path=other",
        "data.max_train_samples=100",
        "train.max_steps=100",
        "train.epochs=3",
        "train.warmup_steps=7",
        "train.lr=1e-3",  # the optimiser state's rate would win silently
        "model.vision.lr=1e-5",
        "train.optimizer=sgd",
    ],
)
def test_keys_that_make_a_resume_inexact_are_refused(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"  {key}: "):
        check_resume_config(load_recipe(None), load_recipe(None, [override]))


def test_every_changed_key_is_named_at_once() -> None:
    saved = load_recipe(None)
    current = load_recipe(None, ["train.batch_size=3", "train.seed=5"])
    with pytest.raises(ConfigError) as info:
        check_resume_config(saved, current)
    assert "train.batch_size: 64" in str(info.value) and "train.seed: 0" in str(info.value)


@pytest.mark.parametrize(
    "override",
    [
        "train.stop_at_step=3",
        "train.output_dir=elsewhere",
        "train.log_every=1",
        "train.checkpoint_every=5",
        "eval.every=10",
        "train.epochs=3",  # max_steps sets the length
        "train.momentum=0.5",  # AdamW has none
        "data.num_workers=2",
    ],
)
def test_keys_that_change_only_what_follows_may_change(override: str) -> None:
    saved = load_recipe(None, ["train.max_steps=10"])
    check_resume_config(saved, load_recipe(None, ["train.max_steps=10", override]))


def test_a_streamed_run_keeps_its_kind() -> None:
    saved = load_recipe(None, ["data.streaming=true", "train.max_steps=9"])
    current = load_recipe(None, ["train.max_steps=9"])
    with pytest.raises(ConfigError, match="resume it with data.streaming=true"):
        check_resume_config(saved, current)


def test_check_resume_reads_the_checkpoint_and_counts_its_processes(tmp_path: Path) -> None:
    folder = tmp_path / "step-00000002"
    cfg = load_recipe(None, ["train.max_steps=4"])
    save_config(cfg, folder / "config.yaml")
    check_resume(folder, cfg, 1)  # no random states: nothing to count
    with pytest.raises(ConfigError, match=r"train\.max_steps: 4 in the checkpoint, 8 now"):
        check_resume(folder, load_recipe(None, ["train.max_steps=8"]), 1)
    for rank in (0, 1):
        torch.save({}, folder / f"random_states_{rank}.pkl")
    check_resume(folder, cfg, 2)
    with pytest.raises(ConfigError, match="written by 2 processes and this run has 1"):
        check_resume(folder, cfg, 1)


# --------------------------------------------------------------------------- load failures


def saved_state(folder: Path, model: nn.Module) -> Accelerator:
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    accelerator.prepare(model, optimizer)
    accelerator.save_state(str(folder))
    return accelerator


def load_into(folder: Path, model: nn.Module) -> None:
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    accelerator.prepare(model, optimizer)
    with explained_load_errors(folder):
        accelerator.load_state(str(folder))


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoints" / "step-00000003"
    saved_state(folder, nn.Linear(4, 2))
    return folder


def test_a_sound_checkpoint_loads(checkpoint: Path) -> None:
    load_into(checkpoint, nn.Linear(4, 2))


def test_damaged_weights_name_the_folder_and_file(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(CheckpointError) as info:
        load_into(checkpoint, nn.Linear(4, 2))
    message = str(info.value)
    assert f"cannot resume from {checkpoint}: model.safetensors is not a readable" in message
    assert f"Resume from another checkpoint of {checkpoint.parent}" in message
    assert isinstance(info.value, ValueError) and info.value.__cause__ is not None


def test_weights_of_another_architecture_name_the_keys(checkpoint: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_into(checkpoint, nn.Linear(4, 3))
    message = str(info.value)
    assert "its model.safetensors does not fit the model this config builds" in message
    assert "weight is [2, 4] in the file, [3, 4] in the model" in message


def test_missing_and_unexpected_keys_are_named(checkpoint: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_into(checkpoint, nn.Sequential(nn.Linear(4, 2)))
    message = str(info.value)
    assert "the file lacks 2 keys of the model (0.bias, 0.weight)" in message
    assert "it holds 2 keys the model has not (bias, weight)" in message


def test_a_damaged_optimiser_state_is_named(checkpoint: Path) -> None:
    (checkpoint / "optimizer.bin").write_bytes(b"cut short" * 8)
    with pytest.raises(CheckpointError, match="optimizer.bin is not a torch archive"):
        load_into(checkpoint, nn.Linear(4, 2))


def test_an_optimiser_state_of_other_groups_is_explained(tmp_path: Path) -> None:
    folder = tmp_path / "step-00000001"
    model = nn.Linear(4, 2)
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}])
    accelerator.prepare(model, optimizer)
    accelerator.save_state(str(folder))
    with pytest.raises(CheckpointError, match="its optimizer.bin does not fit this run's"):
        load_into(folder, nn.Linear(4, 2))


def test_a_missing_file_is_named(checkpoint: Path) -> None:
    (checkpoint / "optimizer.bin").unlink()
    with pytest.raises(CheckpointError, match=f"{checkpoint}: it holds no optimizer.bin"):
        load_into(checkpoint, nn.Linear(4, 2))


def test_other_errors_keep_their_text(tmp_path: Path) -> None:
    message = explain_load_failure(tmp_path, KeyError("state"))
    assert message.startswith(f"cannot resume from {tmp_path}: KeyError: 'state'")
