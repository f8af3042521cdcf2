"""The training loop end to end on tiny random towers: smoke, resume, bf16, CLI and errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import RECIPES, bad_folder, train_stopped_and_resumed
from safetensors.torch import load_file

from mmcontrast.cli import main
from mmcontrast.config import load_recipe
from mmcontrast.pipeline import train

QUICKSTART = str(RECIPES / "quickstart.yaml")  # a command-line argument


def cli(args: list[str], overrides: list[str]) -> int:
    return main([*args, *[x for o in overrides for x in ("--set", o)]])


def test_train_smoke_then_eval(tiny_run: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    overrides = [
        *tiny_run,
        "train.max_steps=3",
        "train.trackers=[tensorboard]",
        "model.vision.weights=null",
        "eval.ks=[1, 3]",
    ]
    assert cli(["train", QUICKSTART], overrides) == 0
    run = Path(load_recipe(QUICKSTART, overrides).train.output_dir)
    for name in [
        "model.safetensors",
        "config.yaml",
        "history.jsonl",
        "eval/retrieval.json",
        "eval/retrieval_grid.png",
    ]:
        assert (run / name).is_file(), name
    assert list(run.glob("mmcontrast/events.out.tfevents.*")), "tensorboard logs"
    record = json.loads((run / "eval" / "retrieval.json").read_text())
    assert record["num_images"] == 16 and record["num_texts"] == 32
    assert {"image_retrieval_recall@1", "text_retrieval_recall@3"} <= set(record["metrics"])
    assert "text_retrieval_recall@10" not in record["metrics"]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3]
    assert all(h["pairs_per_s"] > 0 and "lr" in h and "logit_scale" in h for h in history)
    capsys.readouterr()

    assert main(["eval", "--model", str(run), "--output", str(run / "again")]) == 0
    again = json.loads((run / "again" / "retrieval.json").read_text())
    assert again["metrics"] == pytest.approx(
        record["metrics"]
    )  # reloaded weights give the same numbers
    assert "text->image" in capsys.readouterr().out
    assert again["options"]["ks"] == [1, 3]  # the run's eval.ks, not the CLI's 1 5 10

    assert main(["eval", "--model", str(run), "--output", str(run / "k2"), "--ks", "2"]) == 0
    chosen = json.loads((run / "k2" / "retrieval.json").read_text())["metrics"]
    assert "image_retrieval_recall@2" in chosen and "image_retrieval_recall@3" not in chosen
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(run), "--knn-temperature", "0"])
    assert "expected a positive number, got '0'" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_mid_epoch_is_exact(tiny_run: list[str], tmp_path: Path) -> None:
    """Stop at step 5 (mid-epoch 2), resume: same losses and same final weights as one run."""
    common = [
        *tiny_run,
        "model.vision.weights=null",
        "train.epochs=2",  # 32 pairs / batch 8 = 4 steps per epoch
        "train.warmup_steps=2",
        "train.checkpoint_every=3",
        "train.cache_locked_features=false",
        "model.vision.lock=false",
        "data.random_resized_crop=[0.5, 1.0]",  # augmentation randomness
        "data.horizontal_flip=0.5",
        "eval.at_end=false",
    ]

    def stopped_early(first: dict) -> None:
        assert first["step"] == 5 and not (tmp_path / "split" / "model.safetensors").exists()

    full, first, second = train_stopped_and_resumed(QUICKSTART, common, tmp_path, 5, stopped_early)
    assert second["step"] == 8
    losses = [h["loss"] for h in full["history"]]
    assert len(losses) == 8 and len(set(losses)) > 1
    assert [h["loss"] for h in first["history"] + second["history"]] == losses
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_mixed_precision_step_on_cpu(tiny_run: list[str]) -> None:
    cfg = load_recipe(
        QUICKSTART,
        [
            *tiny_run,
            "model.vision.weights=null",
            "train.max_steps=2",
            "train.mixed_precision=bf16",
            "eval.at_end=false",
        ],
    )
    summary = train(cfg)
    assert summary["step"] == 2 and all(
        torch.isfinite(torch.tensor(h["loss"])) for h in summary["history"]
    )


def test_gradient_accumulation_and_siglip(tiny_run: list[str]) -> None:
    cfg = load_recipe(
        QUICKSTART,
        [
            *tiny_run,
            "model.vision.weights=null",
            "loss.name=siglip",
            "train.gradient_accumulation_steps=2",
            "train.max_steps=2",
            "eval.at_end=false",
        ],
    )
    summary = train(cfg)
    assert summary["step"] == 2  # 4 batches -> 2 optimiser steps


def test_bad_training_data_is_skipped_with_a_warning(
    tiny_run: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bad_folder(tmp_path / "bad")
    overrides = [
        *tiny_run,
        "model.vision.weights=null",
        f"data.path={data}",
        "train.batch_size=1",
        "train.epochs=1",
        "data.eval_split=null",
    ]
    assert cli(["train", QUICKSTART], overrides) == 0
    out = capsys.readouterr().out
    assert (
        "skipped 4 bad training rows (unreadable image: 2, empty caption: 1, "
        "missing image file: 1); first: " in out
    )
    assert "does_not_exist.png (missing image file)" in out


def test_a_run_with_no_usable_sample_stops(
    tiny_run: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every image over data.max_image_pixels: refused after the first batches, nothing saved."""
    overrides = [
        *tiny_run,
        "model.vision.weights=null",
        "model.vision.lock=false",
        "train.cache_locked_features=false",
        "train.max_steps=12",
        "data.max_image_pixels=100",  # the 32 x 32 shapes have 1024
    ]
    assert cli(["train", QUICKSTART], overrides) == 2
    err = capsys.readouterr().err
    assert "the first 8 batches held no usable sample" in err and "image too large" in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lerning_rate=1"], r"did you mean 'train.lr'\?"),
        (["model.vision.source=hff"], "unknown tower source 'hff'; did you mean 'hf'?"),
        (["loss.name=clipp"], "unknown loss 'clipp'; did you mean 'clip'?"),
        (
            ["loss.name=triplet"],
            "method 'image_text' trains with an image-text loss \\(clip, .*siglip_multi.*\\), not 'triplet'",
        ),
        (["method=simclrr"], "unknown method 'simclrr'"),
        (["data.path=/nonexistent/folder"], "cannot load dataset"),
        (["data.caption_column=caption"], "column 'caption' not found"),
        (["model.text.tokenizer=/nonexistent/tok"], "cannot load a tokenizer"),
    ],
)
def test_cli_errors_are_clear(
    tiny_run: list[str], overrides: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    code = cli(
        ["train", QUICKSTART],
        [*tiny_run, "model.vision.weights=null", "train.max_steps=1", *overrides],
    )
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_list_and_module_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["clip", "siglip", "hf", "timm", "open_clip", "emoji"]:
        assert name in out
    assert main(["list", "recipes"]) == 0
    assert "quickstart.yaml" in capsys.readouterr().out
    result = subprocess.run(
        [sys.executable, "-m", "mmcontrast", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--resume" in result.stdout and "--set" in result.stdout


def test_cached_locked_features_train_like_the_tower(tiny_run: list[str], tmp_path: Path) -> None:
    """Caching a locked vision tower's output changes the speed, not the training."""
    common = [
        *tiny_run,
        "model.vision.weights=null",
        "model.vision.lock=true",
        "train.max_steps=3",
        "eval.at_end=false",
    ]
    runs = []
    for cached in ("true", "false"):
        cfg = load_recipe(
            QUICKSTART,
            [
                *common,
                f"train.cache_locked_features={cached}",
                f"train.output_dir={tmp_path / cached}",
            ],
        )
        runs.append([h["loss"] for h in train(cfg)["history"]])
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)
    with pytest.raises(ValueError, match="cannot be combined with image augmentation"):
        train(
            load_recipe(
                QUICKSTART,
                [*common, "train.cache_locked_features=true", "data.horizontal_flip=0.5"],
            )
        )


def test_missing_eval_split_fails_before_training(
    tiny_run: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(
        ["train", QUICKSTART],
        [*tiny_run, "model.vision.weights=null", "data.eval_split=validation"],
    )
    assert code == 2
    assert "split 'validation'" in capsys.readouterr().err
    assert not (
        Path(load_recipe(QUICKSTART, tiny_run).train.output_dir) / "config.yaml"
    ).exists()  # nothing trained


def test_history_restarts_with_a_fresh_run_and_continues_on_resume(tiny_run: list[str]) -> None:
    overrides = [
        *tiny_run,
        "model.vision.weights=null",
        "eval.at_end=false",
        "train.checkpoint_every=1",
    ]
    cfg = load_recipe(QUICKSTART, [*overrides, "train.max_steps=2"])
    train(cfg)
    with pytest.raises(FileExistsError, match=r"already holds an earlier run \(checkpoints, "):
        train(cfg)  # an earlier run's checkpoints are never silently mixed with a new run
    overwrite = ["train.max_steps=2", "train.overwrite_output_dir=true"]
    train(load_recipe(QUICKSTART, [*overrides, *overwrite]))
    history = Path(cfg.train.output_dir) / "history.jsonl"
    assert [json.loads(line)["step"] for line in history.read_text().splitlines()] == [1, 2]
    train(load_recipe(QUICKSTART, [*overrides, *overwrite, "train.stop_at_step=1"]))
    train(cfg, resume="latest")
    assert [json.loads(line)["step"] for line in history.read_text().splitlines()] == [1, 2]


def test_a_finished_run_is_not_replaced_without_asking(
    tiny_run: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """No checkpoints, only the final weights and evaluation: still an earlier run."""
    overrides = [*tiny_run, "model.vision.weights=null", "train.max_steps=1"]
    train(load_recipe(QUICKSTART, overrides))
    output = Path(load_recipe(QUICKSTART, overrides).train.output_dir)
    before = (output / "model.safetensors").read_bytes()
    assert cli(["train", QUICKSTART], overrides) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "eval" in err and "--overwrite" in err
    assert (output / "model.safetensors").read_bytes() == before  # untouched
    assert cli(["train", QUICKSTART, "--overwrite"], [*overrides, "train.seed=1"]) == 0
    assert (output / "model.safetensors").read_bytes() != before


def test_an_output_dir_that_is_a_file_is_named(tiny_run: list[str], tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    cfg = load_recipe(QUICKSTART, [*tiny_run, f"train.output_dir={afile}"])
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        train(cfg)
    assert afile.read_text() == "keep me"
