"""A run fine-tuned with ``model.init_from`` records its source by absolute path, so it loads
from any working directory; a source moved away since is named with what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from helpers import save_clip, train_from

from mmcontrast.methods.trained import load_trained
from mmcontrast.models.locations import absolute_source


def test_absolute_source_resolves_local_paths_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "clip").mkdir(parents=True)
    (tmp_path / "oc.json").write_text("{}")
    assert absolute_source("models/clip") == str(tmp_path / "models" / "clip")
    assert absolute_source("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    assert absolute_source("open_clip:ViT-B-32:laion2b_s34b_b79k") == (
        "open_clip:ViT-B-32:laion2b_s34b_b79k"
    )
    assert absolute_source("open_clip:local-dir:models/clip") == (
        f"open_clip:local-dir:{tmp_path / 'models' / 'clip'}"
    )
    assert absolute_source("open_clip:hf-hub:models/clip") == "open_clip:hf-hub:models/clip"
    assert absolute_source("open_clip:oc.json:missing.safetensors") == (
        f"open_clip:{tmp_path / 'oc.json'}:missing.safetensors"
    )


def test_a_run_from_a_relative_source_loads_anywhere_and_names_a_moved_one(
    tokenizer_dir: Path, shapes_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    save_clip(tmp_path / "models" / "clip", tokenizer_dir)
    run = tmp_path / "run"
    train_from("models/clip", shapes_dir, run, steps=1)  # a relative source
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_from"] == str(tmp_path / "models" / "clip")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_trained(run).cfg.model.init_from == str(tmp_path / "models" / "clip")

    shutil.move(tmp_path / "models", tmp_path / "moved")
    with pytest.raises(
        ValueError,
        match=r"was fine-tuned from .*put it back, or set "
        r"model.init_from in config.yaml",
    ) as info:
        load_trained(run)
    assert "model.safetensors" in str(info.value)
