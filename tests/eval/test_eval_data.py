"""Resolving ``--data`` for evaluation: built-ins, class lists spanning splits, columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmcontrast.config import DataConfig
from mmcontrast.eval import data as eval_data
from mmcontrast.eval.data import emoji_class_names, readable_name, resolve_data


def test_fashion_mnist_builtin_names_classes_for_prompts() -> None:
    resolved = resolve_data("fashion_mnist")
    assert resolved.config.path == "fashion_mnist" and resolved.split == "test"
    assert resolved.class_names is not None and len(resolved.class_names) == 10
    assert resolved.class_names[0] == "t-shirt" and resolved.class_names[9] == "ankle boot"
    assert resolved.templates == eval_data.FASHION_MNIST_TEMPLATES


def test_emoji_builtins_use_every_split_for_the_class_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "data" / "emoji"
    for split, rows in {
        "train": [("face-smiling", "Smileys & Emotion"), ("animal-bird", "Animals & Nature")],
        "test": [("face-smiling", "Smileys & Emotion"), ("flag", "Flags")],  # 'flag' only here
    }.items():
        (folder / split).mkdir(parents=True)
        lines = [
            json.dumps({"file_name": "x.png", "text": "t", "subcategory": s, "category": c})
            for s, c in rows
        ]
        (folder / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "build_info.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    resolved = resolve_data("emoji-subcategory")
    assert resolved.config.label_column == "subcategory"
    assert resolved.class_labels == ["animal-bird", "face-smiling", "flag"]
    assert resolved.class_names == ["animal bird", "face smiling", "flag"]
    assert emoji_class_names(folder, "category") == [
        "Animals & Nature",
        "Flags",
        "Smileys & Emotion",
    ]
    assert resolve_data("emoji").config.caption_column == "text"
    with pytest.raises(ValueError, match="unknown built-in"):
        resolve_data("emoji-colour")


def test_folders_columns_and_a_runs_own_data(tmp_path: Path) -> None:
    resolved = resolve_data(str(tmp_path), split="val", caption_column="caption")
    assert resolved.config.path == str(tmp_path) and resolved.split == "val"
    assert resolved.config.caption_column == "caption" and resolved.class_names is None
    base = DataConfig(path="my/pairs", caption_column="alt", eval_split="dev")
    from_run = resolve_data("my/pairs", base=base)
    assert from_run.config.caption_column == "alt" and from_run.split == "dev"
    assert base.caption_column == "alt"  # the run's config is copied, not changed
    with pytest.raises(ValueError, match="unknown data column"):
        resolve_data(str(tmp_path), text_column="x")
    assert readable_name("Food & Drink") == "food and drink"
