"""Adding a method is one file, a recipe and a test: nothing in the package is edited.

``toy_method.py`` registers ``toy_siamese`` when imported; this test writes its recipe and
trains it through the ``mmcontrast`` command, evaluation and export included.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import toy_method
import yaml
from helpers import COLOURS, SHAPES, draw
from safetensors.torch import load_file

from mmcontrast.cli import main
from mmcontrast.data.imagefolder import write_imagefolder
from mmcontrast.methods import build_method, load_trained
from mmcontrast.registry import METHODS


@pytest.fixture()
def toy_recipe(tmp_path: Path) -> Path:
    rows = [{"image": draw(c, s), "label": s} for c in COLOURS for s in SHAPES]
    write_imagefolder(rows * 2, tmp_path / "data", "train")
    write_imagefolder(rows, tmp_path / "data", "test")
    recipe = {
        "method": "toy_siamese",
        "method_args": {"out_dim": 4},
        "model": {"vision": {"source": "builtin", "name": "tiny_cnn", "image_size": 16}},
        "data": {"path": str(tmp_path / "data")},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "batch_size": 8,
            "epochs": 2,
            "progress_bar": False,
            "trackers": [],
        },
        "eval": {"knn_k": [3], "batch_size": 16},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_method_from_one_file_trains_through_the_cli(toy_recipe: Path, tmp_path: Path) -> None:
    assert METHODS.get("toy_siamese") is toy_method.ToySiamese
    assert main(["train", str(toy_recipe)]) == 0
    run = tmp_path / "run"
    weights = load_file(str(run / "model.safetensors"))
    assert {"projector.weight", "projector.bias"} <= set(weights)
    knn = json.loads((run / "eval" / "knn.json").read_text())
    assert 0.0 <= knn["metrics"]["knn3_acc1"] <= 100.0
    assert (run / "eval" / "linear.json").is_file()  # the vision base's tasks, declared
    method = load_trained(run)  # rebuilt from the run folder, weights and all
    assert isinstance(method, toy_method.ToySiamese)
    assert method.trained_model() is method.backbone
    assert main(["export", str(run), "--output", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "README.md").is_file()


def test_the_contract_says_what_the_loop_needs(toy_recipe: Path) -> None:
    from mmcontrast.config import load_recipe

    cfg = load_recipe(toy_recipe)
    method = build_method(cfg)
    assert cfg.loss.gather_distributed  # the default: ntxent gathers across processes
    assert method.loss_is_global() is True
    cfg.loss.gather_distributed = False
    assert build_method(cfg).loss_is_global() is False
    assert method.eval_tasks() == ("knn", "linear")
    assert cfg.loss.name is None  # the method filled in its own copy, not the caller's
    assert method.cfg.loss.name == "ntxent"


def test_a_method_whose_loss_the_loop_cannot_tell_fails_loudly(toy_recipe: Path) -> None:
    from mmcontrast.config import Config, load_recipe
    from mmcontrast.losses import NTXentLoss
    from mmcontrast.methods.vision import VisionMethod

    class Unsaid(VisionMethod):  # builds its loss itself: whether it gathers is unknown
        args_class = toy_method.ToyArgs
        loss_name = "ntxent"

        def __init__(self, cfg: Config) -> None:
            super().__init__(cfg)
            self.loss_fn = NTXentLoss(gather_distributed=True)

    with pytest.raises(NotImplementedError, match="loss_is_global"):
        Unsaid(load_recipe(toy_recipe)).loss_is_global()
