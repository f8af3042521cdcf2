"""WiSE-FT (Wortsman et al. 2022): a tiny random CLIPModel (no network) fine-tuned with
``model.init_from`` for a few steps, mixed with its start. ``alpha`` 0 is the source's dual
encoder bit for bit, 1 the run's weights bit for bit, 0.5 their mean; LoRA is merged first;
non-floating tensors must agree; bad alphas, a run without ``init_from`` and another
architecture are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import save_clip, tiny_overrides, train_from
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel

from mmcontrast.cli import main
from mmcontrast.config import load_recipe
from mmcontrast.methods import Method, build_method, load_trained
from mmcontrast.methods.trained import merge_lora
from mmcontrast.methods.wise_ft import interpolate, load_wise_ft, wise_ft_method
from mmcontrast.train.checkpoint import save_weights

State = dict[str, torch.Tensor]


def fine_tune(source: Path, shapes: Path, folder: Path, *extra: str) -> Path:
    """A run fine-tuned from ``source`` for 3 steps, saved in ``folder``."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # module fixtures: a fresh state
    train_from(source, shapes, folder, *extra, at_start=None)
    return folder


@pytest.fixture(scope="module")
def clip_source(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return save_clip(tmp_path_factory.mktemp("wise_ft") / "clip", tokenizer_dir)


@pytest.fixture(scope="module")
def clip_run(clip_source: Path, shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fine_tune(clip_source, shapes_dir, tmp_path_factory.mktemp("wise_ft") / "run")


@pytest.fixture(scope="module")
def lora_run(clip_source: Path, shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wise_ft") / "lora"
    return fine_tune(clip_source, shapes_dir, folder, "model.text.lora={rank: 4}")


@pytest.fixture(scope="module")
def towers_run(
    shapes_dir: Path, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A 'run' on ViT + BERT towers built by the recipe (no init_from): random weights."""
    folder = tmp_path_factory.mktemp("wise_ft") / "towers"
    cfg = load_recipe(None, tiny_overrides(shapes_dir, tokenizer_dir, folder))
    save_weights(build_method(cfg), cfg, folder)
    return folder


def source_state(source: Path) -> State:
    """The source's dual encoder as ``model.init_from`` builds it: the starting model."""
    return build_method(load_recipe(None, [f"model.init_from={source}"])).state_dict()


def state(method: Method) -> State:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def assert_equal(a: State, b: State) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------ interpolate


def test_interpolate_mixes_floats_and_copies_the_rest() -> None:
    start = {"w": torch.zeros(3), "h": torch.ones(2, dtype=torch.bfloat16), "ids": torch.arange(4)}
    tuned = {"w": torch.full((3,), 4.0), "h": torch.full((2,), 3.0, dtype=torch.bfloat16)}
    tuned["ids"] = torch.arange(4)
    mixed = interpolate(start, tuned, 0.25)
    assert torch.equal(mixed["w"], torch.full((3,), 1.0))
    assert mixed["h"].dtype == torch.bfloat16 and torch.equal(mixed["h"], torch.full((2,), 1.5))
    assert torch.equal(mixed["ids"], torch.arange(4)) and mixed["ids"].dtype == torch.int64
    # the ends are copies, bit for bit, of the two models
    odd = {"w": torch.randn(3), "h": torch.randn(2).bfloat16(), "ids": torch.arange(4)}
    assert_equal(interpolate(odd, tuned, 0.0), odd)
    assert_equal(interpolate(odd, tuned, 1.0), tuned)
    assert interpolate(odd, tuned, 1.0)["w"] is not tuned["w"]


def test_interpolate_refuses_what_cannot_be_mixed() -> None:
    a = {"w": torch.zeros(3), "ids": torch.arange(4)}
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\].*got 1.5"):
        interpolate(a, a, 1.5)
    for bad in (-0.1, math.nan):
        with pytest.raises(ValueError, match="alpha must be in"):
            interpolate(a, a, bad)
    same_architecture = "WiSE-FT needs the same architecture"
    with pytest.raises(ValueError, match=f"{same_architecture}.*only the fine-tuned model has x"):
        interpolate(a, {**a, "x": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match=rf"{same_architecture}.*shapes differ: w \[3\] vs \[4\]"):
        interpolate(a, {**a, "w": torch.zeros(4)}, 0.5)
    with pytest.raises(ValueError, match=f"{same_architecture}.*non-floating .* differ: ids"):
        interpolate(a, {**a, "ids": torch.arange(4).flip(0)}, 0.5)
    with pytest.raises(ValueError, match=f"{same_architecture}.*dtypes differ: w"):
        interpolate(a, {**a, "w": torch.zeros(3, dtype=torch.long)}, 0.5)


# ------------------------------------------------------------------ a fine-tuned run


def test_ends_are_the_two_models_and_the_middle_their_mean(
    clip_source: Path, clip_run: Path
) -> None:
    start = source_state(clip_source)
    tuned = load_file(str(clip_run / "model.safetensors"))
    assert any(not torch.equal(start[k], tuned[k]) for k in tuned)  # it trained
    pair = load_wise_ft(clip_run)
    assert pair.start_name == str(clip_source)
    assert_equal(state(pair.mix(0.0)), start)
    assert_equal(state(pair.mix(1.0)), tuned)
    half = state(pair.mix(0.5))
    for key, value in half.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (start[key] + tuned[key]) / 2, rtol=0, atol=1e-7)
        else:
            assert torch.equal(value, tuned[key])
    assert not pair.method.training
    assert_equal(wise_ft_method(clip_run, 1.0).state_dict(), tuned)  # the one-call form


def test_lora_is_merged_before_mixing(clip_source: Path, lora_run: Path) -> None:
    tuned = state(merge_lora(load_trained(lora_run)))
    assert not any("lora_" in key for key in tuned)
    start = source_state(clip_source)
    pair = load_wise_ft(lora_run)
    assert pair.method.cfg.model.text.lora is None
    assert_equal(state(pair.mix(0.0)), start)
    assert_equal(state(pair.mix(1.0)), tuned)
    text = "model.text.model.encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(start[text], tuned[text])  # the merged update is in the weights
    torch.testing.assert_close(
        state(pair.mix(0.5))[text], (start[text] + tuned[text]) / 2, rtol=0, atol=1e-7
    )


def test_an_explicit_start(clip_source: Path, clip_run: Path, lora_run: Path) -> None:
    # a source for init_from, or another run: alpha 0 is that model
    assert_equal(
        state(load_wise_ft(clip_run, start=clip_source).mix(0.0)), source_state(clip_source)
    )
    lora_tuned = state(merge_lora(load_trained(lora_run)))
    assert_equal(state(load_wise_ft(clip_run, start=lora_run).mix(0.0)), lora_tuned)


def test_refuses_runs_it_cannot_mix(clip_run: Path, towers_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="did not start from a pretrained model"):
        wise_ft_method(towers_run, 0.5)
    with pytest.raises(ValueError, match="WiSE-FT needs the same architecture"):
        load_wise_ft(clip_run, start=towers_run)
    with pytest.raises(ValueError, match="can only replace the source of a run that used one"):
        load_wise_ft(towers_run, start=clip_run / "missing-source")
    with pytest.raises(FileNotFoundError, match="holds no config.yaml"):
        wise_ft_method(tmp_path / "missing", 0.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        wise_ft_method(clip_run, 1.5)


# ------------------------------------------------------------------ the command line


def test_cli_scores_every_alpha_then_exports_a_mix(
    clip_source: Path, clip_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["wise-ft", str(clip_run), "--alphas", "1", "0", "0.5", "--batch-size", "8"]
    assert main([*args, "--device", "cpu"]) == 0
    out = clip_run / "wise_ft"
    record = json.loads((out / "wise_ft.json").read_text())
    assert [row["alpha"] for row in record["rows"]] == record["alphas"] == [0.0, 0.5, 1.0]
    assert record["start"] == str(clip_source)
    assert record["headline"] == ["image_retrieval_recall@1", "text_retrieval_recall@1"]
    assert "image_retrieval_mean_rank" in record["metrics"]
    for row in record["rows"]:
        assert set(row["metrics"]) == set(record["metrics"])
        saved = json.loads((out / row["folder"] / "retrieval.json").read_text())["metrics"]
        assert saved == row["metrics"]
    with Image.open(out / "wise_ft.png") as picture:
        assert picture.format == "PNG" and picture.width > 600  # two panels
    assert not [p for p in clip_run.iterdir() if p.name.startswith(".wise_ft")]  # no leftovers
    printed = capsys.readouterr().out
    table = printed[printed.index("WiSE-FT (weight-space ensembles)") :].splitlines()
    assert table[1].split() == ["alpha", *record["headline"]]
    assert [line.split()[0] for line in table[2:5]] == ["0", "0.5", "1"]
    assert main(args) == 2  # the results are there: not replaced without --overwrite
    assert "is not empty" in capsys.readouterr().err

    # the mix of alpha 0.5 as a plain transformers CLIPModel, with that alpha's evaluation
    export_dir = tmp_path / "export"
    assert (
        main(["export", str(clip_run), "--output", str(export_dir), "--wise-ft-alpha", "0.5"]) == 0
    )
    exported = AutoModel.from_pretrained(export_dir)
    assert type(exported).__name__ == "CLIPModel"
    start, tuned = source_state(clip_source), load_file(str(clip_run / "model.safetensors"))
    pairs = {
        "visual_projection.weight": "model.vision_projection.weight",
        "text_projection.weight": "model.text_projection.weight",
        "logit_scale": "model.logit_scale",
    }
    theirs = exported.state_dict()
    for prefix, ours in (
        ("vision_model.", "model.vision.model."),
        ("text_model.", "model.text.model."),
    ):
        pairs.update({k: ours + k[len(prefix) :] for k in theirs if k.startswith(prefix)})
    for key, ours in pairs.items():
        if key.endswith("position_ids"):
            continue
        mean = (start[ours] + tuned[ours]) / 2
        torch.testing.assert_close(
            theirs[key].reshape(mean.shape), mean, rtol=0, atol=1e-7, msg=key
        )
    card = (export_dir / "README.md").read_text()
    assert "WiSE-FT alpha 0.5" in card
    assert "this model (WiSE-FT alpha 0.5)" in card  # the card found the mix's own scores


def test_cli_refuses_bad_input_and_writes_nothing(
    clip_run: Path, towers_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    cases = {
        "alpha must be in [0, 1]": ["wise-ft", str(clip_run), "--alphas", "0", "1.5"],
        "did not start from a pretrained model": ["wise-ft", str(towers_run)],
        "holds no config.yaml": ["wise-ft", str(tmp_path / "missing")],
        "WiSE-FT needs the same architecture": [
            "wise-ft", str(clip_run), "--start", str(towers_run), "--alphas", "0.5",
        ],
    }  # fmt: skip
    for message, args in cases.items():
        assert main([*args, "--output", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not out.exists()
    exports = {
        "alpha must be in [0, 1]": [str(clip_run), "--wise-ft-alpha", "1.5"],
        "did not start from a pretrained model": [str(towers_run), "--wise-ft-alpha", "0.5"],
    }
    for message, args in exports.items():
        assert main(["export", *args, "--output", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not out.exists()
    assert not (towers_run / "wise_ft").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
