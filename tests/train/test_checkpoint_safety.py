"""Resuming reads no pickle that could run code: the schedule's position is JSON, accelerate's
tensors load with ``weights_only``; a planted pickle is never executed; a checkpoint from
before (no ``scheduler.json``) still resumes exactly."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from helpers import RECIPES, train_stopped_and_resumed
from safetensors.torch import load_file

from mmcontrast.config import load_recipe
from mmcontrast.pipeline import train
from mmcontrast.train.checkpoint import SCHEDULE_FILE
from mmcontrast.train.resume_checks import CheckpointError

QUICKSTART = RECIPES / "quickstart.yaml"


class Planted:
    """Unpickling this writes a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def common(tiny_run: list[str]) -> list[str]:
    return [
        *tiny_run,
        "model.vision.weights=null",
        "train.max_steps=6",
        "train.warmup_steps=2",
        "train.checkpoint_every=3",
        "eval.at_end=false",
    ]


def test_checkpoint_keeps_the_schedule_as_json(tiny_run: list[str], tmp_path: Path) -> None:
    train(load_recipe(QUICKSTART, [*common(tiny_run), f"train.output_dir={tmp_path}"]))
    folder = tmp_path / "checkpoints" / "step-00000003"
    assert (folder / SCHEDULE_FILE).is_file()
    assert not list(folder.glob("custom_checkpoint_*"))  # accelerate pickles registered objects


def test_a_planted_pickle_is_never_run(tiny_run: list[str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = [*common(tiny_run), f"train.output_dir={run}", "train.stop_at_step=3"]
    train(load_recipe(QUICKSTART, overrides))
    folder = run / "checkpoints" / "step-00000003"
    marker = tmp_path / "ran"
    (folder / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Planted(marker)))
    resumed = [o for o in overrides if not o.startswith("train.stop_at_step")]
    train(load_recipe(QUICKSTART, resumed), resume="latest")  # ignores it
    assert not marker.exists()
    # in a file accelerate does read, the pickle is refused (weights_only), not run
    (folder / "optimizer.bin").write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(CheckpointError, match="optimizer.bin") as refused:
        train(load_recipe(QUICKSTART, resumed), resume=str(folder))
    assert isinstance(refused.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


def test_a_checkpoint_without_its_schedule_file_resumes_exactly(
    tiny_run: list[str], tmp_path: Path
) -> None:
    """Older checkpoints kept the schedule in a pickle, which is not read: the schedule is
    placed at the checkpoint's step from its own formula."""

    def drop_schedule(first: dict) -> None:
        (tmp_path / "split" / "checkpoints" / "step-00000003" / SCHEDULE_FILE).unlink()

    full, first, second = train_stopped_and_resumed(
        QUICKSTART, common(tiny_run), tmp_path, 3, drop_schedule
    )
    assert [h["lr"] for h in first["history"] + second["history"]] == [
        h["lr"] for h in full["history"]
    ]
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
