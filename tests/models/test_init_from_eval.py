"""The step-0 evaluation of a run started with ``model.init_from`` (``eval.at_start``, on by
default for such runs) scores the source as ``mmcontrast eval --model SOURCE`` does: the
same retrieval metrics on the same held-out pairs, for a transformers CLIPModel and
VisionTextDualEncoderModel, an open_clip model and an mmcontrast run (tiny, random, saved
to folders: no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import save_clip, save_open_clip, save_vtde, tiny_overrides

from mmcontrast.config import load_recipe
from mmcontrast.eval.suite import evaluate_models
from mmcontrast.eval.tasks import EvalOptions
from mmcontrast.pipeline import train

KINDS = ["clip", "vtde", "open_clip", "run"]


@pytest.fixture(scope="module")
def sources(
    tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path, shapes_dir: Path
) -> dict[str, tuple[str, str]]:
    """kind -> (model.init_from, the spec ``mmcontrast eval --model`` takes for it)."""
    root = tmp_path_factory.mktemp("init_from_eval")
    clip = str(save_clip(root / "clip", tokenizer_dir))
    vtde = str(save_vtde(root / "vtde", tokenizer_dir, "clip"))
    oc = save_open_clip(root / "open_clip")
    open_clip = f"{oc / 'tiny-oc.json'}:{oc / 'tiny-oc.safetensors'}"
    run = root / "run"
    train(
        load_recipe(
            None,
            [
                *tiny_overrides(shapes_dir, tokenizer_dir, run),
                "train.max_steps=2",
                "eval.at_end=false",
            ],
        )
    )
    return {
        "clip": (clip, clip),
        "vtde": (vtde, vtde),
        "open_clip": (f"open_clip:{open_clip}", f"open_clip:{open_clip}"),
        "run": (str(run), str(run)),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_step_zero_scores_the_source(
    sources: dict[str, tuple[str, str]], shapes_dir: Path, tmp_path: Path, kind: str
) -> None:
    init_from, spec = sources[kind]
    run = tmp_path / "run"
    overrides = [
        f"model.init_from={init_from}",
        f"data.path={shapes_dir}",
        f"train.output_dir={run}",
        "train.batch_size=8",
        "train.max_steps=1",
        "train.progress_bar=false",
        "train.trackers=[]",
        "eval.batch_size=8",
        "eval.at_end=false",
        "eval.grid_png=false",
    ]
    train(load_recipe(None, overrides))
    assert (run / "eval" / "step-00000000").is_dir()
    history = [json.loads(line) for line in (run / "eval_history.jsonl").read_text().splitlines()]
    at_start = next(line for line in history if line["step"] == 0)

    options = EvalOptions(batch_size=8, pictures=False)
    results = evaluate_models([spec], ["retrieval"], str(shapes_dir), tmp_path / "eval", options)
    expected = results[spec]["retrieval"]
    assert expected
    for key, value in expected.items():
        assert at_start[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
