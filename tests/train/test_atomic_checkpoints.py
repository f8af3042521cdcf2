"""Checkpoints are written into ``.partial-step-N`` and renamed when complete: a write cut
off leaves nothing that looks complete, and resume takes the newest complete checkpoint,
skipping (and naming) one whose state file is unreadable."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from unittest import mock

import pytest
from helpers import RECIPES

from mmcontrast.config import load_recipe
from mmcontrast.pipeline import train
from mmcontrast.train import checkpoint
from mmcontrast.train.checkpoint import STATE_FILE, find_resume_folder, list_checkpoints

QUICKSTART = RECIPES / "quickstart.yaml"


def overrides(tiny_run: list[str], output: Path, *extra: str) -> list[str]:
    return [
        *tiny_run,
        "model.vision.weights=null",
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "train.keep_checkpoints=3",
        "eval.at_end=false",
        f"train.output_dir={output}",
        *extra,
    ]


def test_a_write_cut_off_leaves_the_previous_checkpoint(
    tiny_run: list[str], tmp_path: Path
) -> None:
    original = checkpoint.save_config
    calls = {"n": 0}

    def dies_on_the_second(cfg, path):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:  # step 2 writes, step 4 is cut off at its config.yaml
            raise OSError(28, "No space left on device")
        return original(cfg, path)

    with (
        mock.patch.object(checkpoint, "save_config", dies_on_the_second),
        pytest.raises(checkpoint.CheckpointWriteError) as failed,
    ):
        train(load_recipe(QUICKSTART, overrides(tiny_run, tmp_path)))
    message = str(failed.value)
    assert "step-00000004" in message and "step-00000002" in message and "is intact" in message
    assert "free space" in message.lower() and "--resume" in message
    root = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-00000002"]
    assert not list(root.glob(".partial-*"))  # the failed write removed what it had written
    (root / ".partial-step-00000004").mkdir()  # as a kill -9 mid-write leaves it: ignored
    assert find_resume_folder(tmp_path, "latest").name == "step-00000002"
    summary = train(load_recipe(QUICKSTART, overrides(tiny_run, tmp_path)), resume="latest")
    assert summary["step"] == 4
    assert not list(root.glob(".partial-*"))  # the next write cleaned it up
    assert [p.name for p in list_checkpoints(root)] == ["step-00000002", "step-00000004"]


def test_room_is_made_before_a_write(tiny_run: list[str], tmp_path: Path) -> None:
    """With keep_checkpoints=2 the oldest goes before the third is written: never more than
    2 on disk, never fewer than 1 complete."""
    original = checkpoint.save_config
    present: list[list[str]] = []

    def records(cfg, path):  # noqa: ANN001, ANN202
        if path.parent.name.startswith(".partial-"):
            present.append([p.name for p in list_checkpoints(path.parent.parent)])
        return original(cfg, path)

    extra = ("train.checkpoint_every=1", "train.keep_checkpoints=2", "train.max_steps=4")
    with mock.patch.object(checkpoint, "save_config", records):
        train(load_recipe(QUICKSTART, overrides(tiny_run, tmp_path, *extra)))
    assert present == [[], ["step-00000001"], ["step-00000002"], ["step-00000003"]]
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "step-00000003",
        "step-00000004",
    ]


def test_final_weights_are_readable_like_the_rest(tiny_run: list[str], tmp_path: Path) -> None:
    train(load_recipe(QUICKSTART, overrides(tiny_run, tmp_path)))
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.yaml"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_an_unreadable_state_file_is_skipped_and_named(
    tiny_run: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train(load_recipe(QUICKSTART, overrides(tiny_run, tmp_path)))
    newest = tmp_path / "checkpoints" / "step-00000004"
    (newest / STATE_FILE).write_text("")  # as a full disk would leave it
    with caplog.at_level(logging.WARNING, logger="mmcontrast"):
        assert find_resume_folder(tmp_path, "latest").name == "step-00000002"
    assert "step-00000004" in caplog.text and STATE_FILE in caplog.text
    with pytest.raises(ValueError, match="cannot be read.*--resume latest"):
        find_resume_folder(tmp_path, str(newest))
