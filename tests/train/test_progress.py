"""Progress output: without a terminal one plain line per logged step (no carriage returns);
with a terminal a tqdm bar."""

from __future__ import annotations

import pytest

from mmcontrast.train import progress as progress_module
from mmcontrast.train.progress import Progress

RECORD = {"step": 20, "loss": 2.31744, "lr": 2.5e-4, "pairs_per_s": 412.34}


def test_plain_lines_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress_module, "interactive", lambda: False)
    with Progress(200, 10, bar=True, main_process=True) as progress:
        assert progress.bar is None
        progress.update(11)
        progress.log(RECORD)
    out = capsys.readouterr().out
    assert out.startswith("step 20/200  loss 2.3174  lr 2.50e-04  pairs/s 412.3  eta ")
    assert "\r" not in out and out.count("\n") == 1


def test_other_processes_print_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(200, 0, bar=False, main_process=False) as progress:
        progress.update(20)
        progress.log(RECORD)
    assert capsys.readouterr().out == ""


def test_a_bar_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress_module, "interactive", lambda: True)
    with Progress(200, 10, bar=True, main_process=True) as progress:
        assert progress.bar is not None
        progress.update(20)
        progress.log(RECORD)
        assert progress.bar.n == 20
        with progress.paused():
            print("evaluation header")
    assert capsys.readouterr().out == "evaluation header\n"
    with Progress(200, 10, bar=False, main_process=True) as progress:  # progress_bar: false
        assert progress.bar is None
