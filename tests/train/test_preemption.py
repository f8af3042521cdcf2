"""SIGTERM / SIGINT while training: the step finishes, a checkpoint is written, the run stops
with the signal's exit status, and ``--resume`` continues exactly; ``--resume auto``."""

from __future__ import annotations

import itertools
import json
import signal
from pathlib import Path
from unittest import mock

import pytest
import torch
from helpers import QUICKSTART
from safetensors.torch import load_file

from mmcontrast.config import load_recipe
from mmcontrast.pipeline import read_history, train
from mmcontrast.train import preemption
from mmcontrast.train.checkpoint import list_checkpoints, read_state
from mmcontrast.train.errors import TrainingInterrupted
from mmcontrast.train.progress import Progress


def overrides(tiny_run: list[str], output: Path, *extra: str) -> list[str]:
    return [
        *tiny_run,
        "model.vision.weights=null",
        "train.max_steps=6",
        "train.log_every=1",
        "train.checkpoint_every=null",  # nothing but the signal writes a checkpoint
        "eval.at_end=false",
        f"train.output_dir={output}",
        *extra,
    ]


def signal_at(step: int, *signums: int) -> mock._patch:
    """Deliver ``signums`` to this process when the loop reaches ``step`` (its real handler)."""
    original = Progress.update

    def update(self: Progress, at: int) -> None:
        original(self, at)
        if at == step:
            for signum in signums:
                signal.raise_signal(signum)

    return mock.patch.object(Progress, "update", update)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def losses(folder: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["lr"]) for r in read_history(folder / "history.jsonl")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_and_resume_equals_the_uninterrupted_run(
    tiny_run: list[str], tmp_path: Path, signum: int
) -> None:
    whole = tmp_path / "whole"
    train(load_recipe(QUICKSTART, overrides(tiny_run, whole)))
    cut = tmp_path / "cut"
    cfg = load_recipe(QUICKSTART, overrides(tiny_run, cut))
    handler = signal.getsignal(signum)
    with signal_at(3, signum), pytest.raises(TrainingInterrupted) as stopped:
        train(cfg)
    assert signal.getsignal(signum) == handler  # put back
    assert stopped.value.exit_code == 128 + signum
    assert "--resume" in str(stopped.value)
    (folder,) = list_checkpoints(cut / "checkpoints")
    assert read_state(folder).step == 3
    assert not (cut / "model.safetensors").exists()
    # history lines logged after the checkpoint (a kill after it) are logged again once
    with open(cut / "history.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "loss": 123.0, "lr": 0.0, "pairs_per_s": 1.0}) + "\n")
        f.write('{"step": 5, "lo')  # a line cut off by the kill
    train(cfg, resume="latest")
    a, b = weights(whole), weights(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(cut) == losses(whole)
    steps = [json.loads(line)["step"] for line in (cut / "history.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) == list(range(1, 7))


def test_ctrl_c_pressed_again_stops_at_once(tiny_run: list[str], tmp_path: Path) -> None:
    cfg = load_recipe(QUICKSTART, overrides(tiny_run, tmp_path / "run"))
    seconds = itertools.count(0.0, 2.0)  # the second press two seconds after the first
    with (
        mock.patch.object(preemption, "_clock", lambda: next(seconds)),
        signal_at(2, signal.SIGINT, signal.SIGINT),
        pytest.raises(KeyboardInterrupt),
    ):
        train(cfg)
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_passed_on_twice_is_one_request(
    tiny_run: list[str], tmp_path: Path, signum: int
) -> None:
    """A launcher forwards what the scheduler also sent: the same signal twice at once."""
    cfg = load_recipe(QUICKSTART, overrides(tiny_run, tmp_path / "run"))
    with signal_at(2, signum, signum), pytest.raises(TrainingInterrupted):
        train(cfg)
    (folder,) = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert read_state(folder).step == 2


def test_a_signal_ignored_at_start_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `nohup cmd &` starts it
    try:
        with preemption.StopSignals() as stops:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stops._handle
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_resume_auto_starts_fresh_then_resumes_then_is_done(
    tiny_run: list[str], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    cfg = load_recipe(QUICKSTART, overrides(tiny_run, run))
    with signal_at(2, signal.SIGTERM), pytest.raises(TrainingInterrupted):
        train(cfg, resume="auto")  # no checkpoint: a fresh run
    assert read_state(list_checkpoints(run / "checkpoints")[-1]).step == 2
    summary = train(cfg, resume="auto")  # the checkpoint: resumes from it
    assert summary["step"] == 6
    assert [r["step"] for r in summary["history"]] == [3, 4, 5, 6]
    before = (run / "history.jsonl").read_text()
    assert train(cfg, resume="auto")["already_finished"]  # a requeue after the end
    assert (run / "history.jsonl").read_text() == before


def test_resume_auto_keeps_an_early_attempts_files_unless_overwrite(
    tiny_run: list[str], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text('{"step": 1, "loss": 9.0}\n')  # killed before step 2
    cfg = load_recipe(QUICKSTART, overrides(tiny_run, run, "train.max_steps=2"))
    with pytest.raises(FileExistsError, match="history.jsonl.*--overwrite"):
        train(cfg, resume="auto")
    cfg.train.overwrite_output_dir = True
    assert train(cfg, resume="auto")["step"] == 2


def test_resuming_an_older_checkpoint_drops_the_later_ones(
    tiny_run: list[str], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    extra = ("train.checkpoint_every=2", "train.keep_checkpoints=0")
    cfg = load_recipe(QUICKSTART, overrides(tiny_run, run, *extra))
    train(cfg)
    root = run / "checkpoints"
    assert [read_state(f).step for f in list_checkpoints(root)] == [2, 4, 6]
    cfg.train.stop_at_step = 3
    train(cfg, resume=str(root / "step-00000002"))
    assert [read_state(f).step for f in list_checkpoints(root)] == [2, 3]
    assert not list(root.glob(".partial-*"))
