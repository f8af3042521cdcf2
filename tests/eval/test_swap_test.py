"""Tests for mmcontrast.eval.swap_test and the ``swaps`` evaluation task."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from helpers import draw, save_clip, save_vtde

from mmcontrast.cli import main
from mmcontrast.data.caption_swaps import SWAP_KINDS, swaps
from mmcontrast.eval import tasks as tasks_module
from mmcontrast.eval.adapters import load_eval_model
from mmcontrast.eval.data import resolve_data
from mmcontrast.eval.swap_test import SwapSet, swap_metrics, swap_set, swap_wins
from mmcontrast.eval.tasks import TASKS, EvalOptions, TaskRun

# every word is in the tiny tokenizer's vocabulary (helpers.WORDS)
SCENES = [
    ("red", "circle", "blue", "square"),
    ("green", "triangle", "yellow", "star"),
    ("blue", "star", "red", "triangle"),
    ("yellow", "square", "green", "circle"),
    ("red", "square", "green", "star"),
    ("blue", "circle", "yellow", "triangle"),
]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Test split: one shape on another (three kinds of swap), some captions with none."""
    from mmcontrast.data.imagefolder import write_imagefolder

    root = tmp_path_factory.mktemp("swap_scenes")
    rows = [
        {"image": draw(c, s), "text": [f"a {c} {s} on a {c2} {s2}", f"a {c} {s}"]}
        for c, s, c2, s2 in SCENES
    ]
    rows.append({"image": draw("red", "star"), "text": "a big red star on the small shape"})
    rows.append({"image": draw("green", "circle"), "text": "a green circle"})
    write_imagefolder(rows, root, "test")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Path]:
    """A tiny CLIPModel (causal, positional text tower) and a VisionTextDualEncoderModel
    whose BERT text tower has its position embeddings zeroed: blind to word order."""
    from transformers import VisionTextDualEncoderModel

    root = tmp_path_factory.mktemp("swap_models")
    blind = save_vtde(root / "order-blind", tokenizer_dir)
    model = VisionTextDualEncoderModel.from_pretrained(blind)
    with torch.no_grad():
        model.text_model.embeddings.position_embeddings.weight.zero_()
    model.save_pretrained(blind)
    return {"clip": save_clip(root / "clip", tokenizer_dir), "order-blind": blind}


def run_for(model: Path, scenes: Path, output: Path | None = None) -> TaskRun:
    return TaskRun(
        load_eval_model(str(model), "cpu"),
        resolve_data(str(scenes)),
        EvalOptions(batch_size=4),
        output_dir=output,
    )


# ------------------------------------------------------------------ the scoring, by hand


def reference(captions: list[list[str]], images, texts, tolerance: float) -> dict[str, float]:
    """The metrics with Python loops: win/tie/loss per swap, means per pair, per kind."""
    per_pair: list[dict[str, list[float]]] = []
    for image, own in enumerate(captions):
        for caption in own:
            found = swaps(caption)
            if not any(found.values()):
                continue
            true = float(F.cosine_similarity(images[image], texts[caption], dim=0))
            scores: dict[str, list[float]] = {}
            for kind in SWAP_KINDS:
                for negative in found[kind]:
                    false = float(F.cosine_similarity(images[image], texts[negative], dim=0))
                    win = 0.5 if abs(true - false) <= tolerance else float(true > false)
                    scores.setdefault(kind, []).append(win)
            per_pair.append(scores)
    kind_means = [{k: sum(v) / len(v) for k, v in p.items()} for p in per_pair]
    out = {"swap_acc": sum(sum(m.values()) / len(m) for m in kind_means) / len(kind_means)}
    for kind in SWAP_KINDS:
        values = [m[kind] for m in kind_means if kind in m]
        out[f"swap_acc_{kind}"] = sum(values) / len(values) if values else math.nan
    return out


def test_scores_equal_a_loop_over_every_swap() -> None:
    captions = [
        ["A cat on a mat.", "a cat"],
        ["A white horse next to a brown dog.", "A man riding a horse on a beach."],
        ["a red car and a blue bus"],
        ["no swap here"],
    ]
    found = swap_set(captions)
    assert found.captions_seen == 6 and len(found.captions) == 4
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(len(captions), 8, generator=generator, dtype=torch.float64)
    unique = sorted(set(found.captions) | set(found.negatives))
    features = {t: torch.randn(8, generator=generator, dtype=torch.float64) for t in unique}
    features[found.negatives[0]] = features[found.captions[0]] * 3  # a tie: same direction
    wins = swap_wins(
        images,
        torch.stack([features[c] for c in found.captions]),
        torch.stack([features[n] for n in found.negatives]),
        found,
    )
    assert float(wins[0]) == 0.5
    metrics, counts = swap_metrics(wins, found)
    expected = reference(captions, images, features, 1e-5)
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert counts == {"all": 4, "noun": 4, "attribute": 2, "relation": 2}


def test_kinds_select_the_swaps() -> None:
    found = swap_set([["A white horse next to a brown dog."]], kinds=("attribute",))
    assert found.kind_of == ["attribute"]
    with pytest.raises(ValueError, match="swap kinds"):
        swap_set([["a cat on a mat"]], kinds=("verb",))


# ------------------------------------------------------------------ the task, real models


def test_an_order_blind_text_tower_scores_exactly_chance(
    models: dict[str, Path], scenes: Path, tmp_path: Path
) -> None:
    run = run_for(models["order-blind"], scenes, tmp_path)
    metrics = TASKS.get("swaps")(run)
    assert metrics == {"swap_acc": 0.5, **{f"swap_acc_{k}": 0.5 for k in SWAP_KINDS}}
    record = json.loads((tmp_path / "swaps.json").read_text())
    assert record["task"] == "swaps" and record["chance"] == 0.5
    assert record["num_images"] == 8 and record["num_captions"] == 14
    assert record["num_pairs"] == {"all": 7, "noun": 7, "attribute": 7, "relation": 7}
    assert record["num_swaps"] == {"noun": 7, "attribute": 8, "relation": 7}  # big, red: small
    assert {e["score"] for e in record["examples"]} == {0.5}


def test_an_order_sensitive_text_tower_moves_off_chance(
    models: dict[str, Path], scenes: Path
) -> None:
    run = run_for(models["clip"], scenes)
    metrics = TASKS.get("swaps")(run)
    assert any(metrics[f"swap_acc_{k}"] != 0.5 for k in SWAP_KINDS)
    assert all(0 <= value <= 1 for value in metrics.values())
    # the same numbers from the model's own embeddings, scored by hand
    table, images = run.pairs("test")
    captions = [table.captions(row) for row in images.rows]
    texts = sorted({t for own in captions for c in own for t in [c, *sum(swaps(c).values(), [])]})
    embedded = dict(zip(texts, run.model.embed_texts(texts).double(), strict=True))
    expected = reference(captions, images.features.double(), embedded, 1e-5)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    assert TASKS.get("swaps")(run_for(models["clip"], scenes)) == metrics  # deterministic


def test_retrieval_and_swaps_embed_the_images_once(models: dict[str, Path], scenes: Path) -> None:
    run = run_for(models["clip"], scenes)
    with mock.patch.object(tasks_module, "embed_images", wraps=tasks_module.embed_images) as spy:
        TASKS.get("retrieval")(run)
        TASKS.get("swaps")(run)
    assert spy.call_count == 1


def test_data_without_swaps_gives_nan_and_says_why(
    models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mmcontrast.data.imagefolder import write_imagefolder

    rows = [{"image": draw(c, "circle"), "text": f"a {c} circle"} for c in ("red", "blue")]
    write_imagefolder(rows, tmp_path / "plain", "test")
    run = run_for(models["clip"], tmp_path / "plain", tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        metrics = TASKS.get("swaps")(run)
    assert all(math.isnan(v) for v in metrics.values())
    assert "has a swap" in caplog.text
    record = json.loads((tmp_path / "out" / "swaps.json").read_text())
    assert record["metrics"]["swap_acc"] is None and record["num_pairs"]["all"] == 0


def test_cli_runs_the_swaps_task(
    models: dict[str, Path], scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "results"
    args = ["eval", "--data", str(scenes), "--output", str(out), "--batch-size", "4"]
    args += ["--model", str(models["clip"]), "--model", str(models["order-blind"])]
    assert main([*args, "--task", "swaps"]) == 0
    assert "swap_acc" in capsys.readouterr().out
    comparison = json.loads((out / "comparison.json").read_text())
    assert [row["swaps"]["swap_acc"] for row in comparison.values()][1] == 0.5
    assert "swaps: swap_acc_relation" in (out / "comparison.md").read_text()


def test_swap_set_of_no_captions_is_empty() -> None:
    assert swap_set([]) == SwapSet()
