"""``train.ema_decay``: the final weights and evaluations are a moving average of the weights.

The reference is the EMA written out by hand from the weights after each step (read from a
checkpoint per step): ``e_1 = w_1``, ``e_t = d_t e_(t-1) + (1 - d_t) w_t`` with timm's
warm-up ``d_t = min(ema_decay, 1 - t ** (-2/3))``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import train_stopped_and_resumed
from safetensors.torch import load_file

from mmcontrast.config import load_recipe
from mmcontrast.methods import Method, load_trained
from mmcontrast.train.ema import EMA_FILE
from mmcontrast.train.hooks import TrainHooks
from mmcontrast.train.loop import train

DECAY = 0.5  # d_2 = 0.37 (warm-up), then 0.5: both regimes within 4 steps
PREFIX = "model."  # the image-text method's trained model (the dual encoder) in its weights


def run(tiny_run: list[str], output: Path, *extra: str) -> dict[int, dict[str, torch.Tensor]]:
    """Train 4 steps with a checkpoint and an evaluation-hook call every step; returns the
    trained model's weights each evaluation saw, by step (4: the final evaluation)."""
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def evaluate(method: Method, folder: Path | None, step: int, accelerator: Any) -> dict:
        state = method.trained_model().state_dict()
        seen[step] = {k: v.detach().clone() for k, v in state.items()}
        return {}

    cfg = load_recipe(
        None,
        [
            *tiny_run,
            f"train.output_dir={output}",
            "train.max_steps=4",
            "train.checkpoint_every=1",
            "train.keep_checkpoints=10",
            "train.optimizer=sgd",
            "train.lr=0.5",  # large steps: the EMA is far from the last weights
            "eval.every=1",
            *extra,
        ],
    )
    train(cfg, hooks=TrainHooks(evaluate=evaluate))
    return seen


def checkpoint_weights(output: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(output / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def test_final_weights_and_evaluations_are_the_ema(tiny_run: list[str], tmp_path: Path) -> None:
    seen = run(tiny_run, tmp_path / "ema", f"train.ema_decay={DECAY}")
    raw = {t: checkpoint_weights(tmp_path / "ema", t) for t in range(1, 5)}
    keys = [k for k in raw[1] if k.startswith(PREFIX) and raw[1][k].is_floating_point()]
    assert keys
    ema = {k: raw[1][k].double() for k in keys}
    hand = {1: ema}
    for t in range(2, 5):
        d = min(DECAY, 1 - t ** (-2 / 3))
        ema = {k: d * ema[k] + (1 - d) * raw[t][k].double() for k in keys}
        hand[t] = ema

    final = load_file(str(tmp_path / "ema" / "model.safetensors"))
    for k in keys:
        torch.testing.assert_close(final[k].double(), hand[4][k], atol=1e-6, rtol=1e-6, msg=k)
        assert not torch.equal(final[k], raw[4][k]) or torch.equal(raw[3][k], raw[4][k]), k
    for k in final.keys() - set(keys):  # outside the trained model, or not floating point
        assert torch.equal(final[k], raw[4][k]), k
    saved = load_file(str(tmp_path / "ema" / "checkpoints" / "step-00000004" / EMA_FILE))
    assert all(torch.equal(saved[k.removeprefix(PREFIX)], final[k]) for k in keys)
    # a checkpoint evaluated or exported (load_trained) is its EMA too, as the final weights
    third = load_trained(tmp_path / "ema" / "checkpoints" / "step-00000003").state_dict()
    for k in keys:
        torch.testing.assert_close(third[k].double(), hand[3][k], atol=1e-6, rtol=1e-6, msg=k)

    assert sorted(seen) == [1, 2, 3, 4]  # every N steps and the final evaluation: the EMA
    for t, weights in seen.items():
        for k in keys:
            got = weights[k.removeprefix(PREFIX)].double()
            torch.testing.assert_close(got, hand[t][k], atol=1e-6, rtol=1e-6, msg=f"{t} {k}")


def test_off_and_on_train_the_same_raw_weights(tiny_run: list[str], tmp_path: Path) -> None:
    """The EMA (and its swaps for evaluation) leaves training alone; off, nothing changes."""
    seen_off = run(tiny_run, tmp_path / "off")
    run(tiny_run, tmp_path / "ema", f"train.ema_decay={DECAY}")
    for t in range(1, 5):
        off, on = checkpoint_weights(tmp_path / "off", t), checkpoint_weights(tmp_path / "ema", t)
        assert off.keys() == on.keys() and all(torch.equal(off[k], on[k]) for k in off), t
        assert not (tmp_path / "off" / "checkpoints" / f"step-{t:08d}" / EMA_FILE).exists()
    final = load_file(str(tmp_path / "off" / "model.safetensors"))
    last = checkpoint_weights(tmp_path / "off", 4)
    assert all(torch.equal(final[k], last[k]) for k in final)  # off: the raw weights
    assert all(
        torch.equal(seen_off[4][k.removeprefix(PREFIX)], final[k])
        for k in final
        if k.startswith(PREFIX)
    )


@pytest.mark.slow
def test_resume_with_ema_is_exact(tiny_run: list[str], tmp_path: Path) -> None:
    """Stop at step 3, resume: the same final (EMA) weights as one run; with layer-wise
    learning-rate decay, whose many parameter groups must come back in the same order."""
    common = [
        *tiny_run,
        "train.epochs=2",  # 4 steps per epoch
        "train.warmup_steps=2",
        "train.checkpoint_every=2",
        "data.random_resized_crop=[0.5, 1.0]",
        f"train.ema_decay={DECAY}",
        "model.vision.lr_decay=0.65",
        "model.text.lr_decay=0.8",
        "eval.at_end=false",
    ]
    full, first, second = train_stopped_and_resumed(None, common, tmp_path, 3)
    assert first["step"] == 3 and second["step"] == 8 and second["ema_decay"] == DECAY
    assert [h["loss"] for h in first["history"] + second["history"]] == [
        h["loss"] for h in full["history"]
    ]
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    folder = tmp_path / "full" / "checkpoints" / "step-00000008"
    (folder / EMA_FILE).unlink()  # as if written without train.ema_decay
    again = load_recipe(None, [*common, f"train.output_dir={tmp_path / 'full'}"])
    with pytest.raises(FileNotFoundError, match="no ema.safetensors.*train.ema_decay=null"):
        train(again, resume=str(folder))
