"""``train.nonfinite``: a non-finite step is skipped (no update, counted), a diverging run
stops with a clear message and exit status 3, and no non-finite weights are ever saved."""

from __future__ import annotations

import json
import math
from pathlib import Path
from unittest import mock

import pytest
import torch
from helpers import RECIPES
from safetensors.torch import load_file

from mmcontrast.cli import main
from mmcontrast.config import load_recipe
from mmcontrast.methods.image_text import ImageTextContrastive
from mmcontrast.pipeline import train
from mmcontrast.train.errors import NonFiniteTraining

QUICKSTART = RECIPES / "quickstart.yaml"


def overrides(tiny_run: list[str], *extra: str) -> list[str]:
    return [
        *tiny_run,
        "model.vision.weights=null",
        "train.max_steps=4",
        "train.warmup_steps=0",
        "eval.at_end=false",
        *extra,
    ]


def nan_at(calls: set[int]):  # noqa: ANN201
    """A method forward whose loss is NaN at the given calls (counted from 1)."""
    original = ImageTextContrastive.forward
    count = {"n": 0}

    def forward(self, batch, embed_only=False):  # noqa: ANN001, ANN202
        out = original(self, batch, embed_only)
        count["n"] += 1
        if count["n"] in calls and not embed_only:
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    return mock.patch.object(ImageTextContrastive, "forward", forward)


def test_a_nan_step_is_skipped(tiny_run: list[str], tmp_path: Path) -> None:
    cfg = load_recipe(QUICKSTART, overrides(tiny_run, f"train.output_dir={tmp_path}"))
    with nan_at({2}):
        summary = train(cfg)
    assert summary["step"] == 4 and summary["nonfinite_skipped"] == 1  # a fifth batch made up
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").open()]
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["nonfinite_skipped"] == 1
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_halt_stops_at_the_first(tiny_run: list[str], tmp_path: Path) -> None:
    cfg = load_recipe(
        QUICKSTART, overrides(tiny_run, f"train.output_dir={tmp_path}", "train.nonfinite=halt")
    )
    with nan_at({3}), pytest.raises(NonFiniteTraining, match="1 optimiser step"):
        train(cfg)
    assert not (tmp_path / "model.safetensors").exists()


def test_a_diverging_run_stops_and_keeps_its_finite_checkpoints(
    tiny_run: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lr 1e6 (as a user typo): the run stops with status 3, its checkpoints finite."""
    args = ["train", str(QUICKSTART)]
    sets = overrides(
        tiny_run,
        f"train.output_dir={tmp_path}",
        "train.max_steps=40",
        "train.lr=1e6",
        "train.optimizer=sgd",
        "train.max_grad_norm=null",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=2",
        "train.nonfinite_limit=2",
    )
    code = main([*args, *[x for o in sets for x in ("--set", o)]])
    assert code == 3
    err = capsys.readouterr().err
    assert "not finite" in err and "a lower train.lr" in err and "Traceback" not in err
    assert not (tmp_path / "model.safetensors").exists()
    checkpoints = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert checkpoints  # the steps before it diverged
    for folder in checkpoints:
        weights = load_file(str(folder / "model.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values()), folder
