"""Embedding tar shards named by a folder, a glob or a brace pattern: the same rows and
embeddings as the imagefolder they were written from."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import save_clip

from mmcontrast.cli import main
from mmcontrast.eval.adapters import load_eval_model
from mmcontrast.search import embed_collection, read_embeddings


@pytest.fixture(scope="module")
def shards(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    assert main(["shards", str(shapes_dir), "--output", str(out), "--splits", "train",
                 "--shard-size", "12"]) == 0  # fmt: skip
    assert len(list((out / "train").glob("*.tar"))) == 3  # 32 pairs in 3 shards
    return out / "train"


@pytest.mark.parametrize(
    "pattern", ["{folder}", "{folder}/*.tar", "{folder}/train-{{00000..00002}}.tar"]
)
def test_shards_by_folder_glob_or_braces(
    pattern: str, shards: Path, shapes_dir: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    model = load_eval_model(str(save_clip(tmp_path / "clip", tokenizer_dir)), "cpu")
    embed_collection(model, shapes_dir, tmp_path / "folder", progress=False)
    data = pattern.format(folder=shards)
    summary = embed_collection(model, data, tmp_path / "tars", split="train", progress=False)
    assert summary.count == 32
    a, b = read_embeddings(tmp_path / "folder"), read_embeddings(tmp_path / "tars")
    captions_a, captions_b = a.metadata["caption"].to_pylist(), b.metadata["caption"].to_pylist()
    assert Counter(captions_b) == Counter(captions_a)
    # each caption's image is drawn the same every time: compare with its first occurrence
    first = {c: i for i, c in reversed(list(enumerate(captions_a)))}
    order = [first[c] for c in captions_b]
    np.testing.assert_allclose(b.images, a.images[order], rtol=1e-4, atol=1e-5)


def test_a_pattern_matching_nothing_is_named(shards: Path, tmp_path: Path) -> None:
    missing = f"{shards}/nothere-{{0..1}}.tar"
    with pytest.raises(ValueError, match="no .*tar shards match"):
        embed_collection("unused", missing, tmp_path / "out", split="train", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
