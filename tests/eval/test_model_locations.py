"""A model name that can only be a local path, and does not exist, fails at once (no Hub
attempt) in ``mmcontrast eval --model`` and ``model.init_from``; Hub-shaped names still go
to the Hub, whose error reads as one sentence."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mmcontrast.eval.adapters import load_eval_model
from mmcontrast.eval.adapters.hf import model_type_of
from mmcontrast.methods.init_source import open_init_source
from mmcontrast.models.locations import check_local_name, local_path_reason


@pytest.fixture()
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to read a config from the Hub fails the test."""

    def refuse(name: Any, *args: Any, **kwargs: Any) -> None:
        pytest.fail(f"tried the Hub for {name!r}")

    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", refuse)


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs_xyz_missing").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("./shape", "starts with './'"),
        ("../shape", "starts with '../'"),
        ("/nowhere/shape", "starts with '/'"),
        ("~/shape", "starts with '~'"),
        ("runs\\shape", "backslash"),
        ("a/b/c", "more than one '/'"),
        ("runs_xyz_missing/shape", "runs_xyz_missing/ is a local folder"),
        ("openai/clip-vit-base-patch32", None),  # ORG/NAME with no local ORG folder
        ("bert-base-uncased", None),
    ],
)
def test_local_path_rule(in_tmp: Path, name: str, reason: str | None) -> None:
    found = local_path_reason(name)
    assert found == reason if reason is None else reason in str(found)


def test_existing_local_path_passes(in_tmp: Path) -> None:
    (in_tmp / "runs_xyz_missing" / "shape").mkdir()
    check_local_name("runs_xyz_missing/shape")
    check_local_name("./runs_xyz_missing/shape")
    check_local_name("openai/clip-vit-base-patch32")  # may be a Hub id: left to the Hub


def test_eval_missing_run_folder_fails_fast(in_tmp: Path, no_hub: None) -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        load_eval_model("runs_xyz_missing/shape", device="cpu")
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert message.startswith("runs_xyz_missing/shape: no such folder; ")
    assert "(a Hub id has the form ORG/NAME; pass an existing folder)" in message
    assert ".." not in message
    for spec in ("clip:runs_xyz_missing/shape", "runs_xyz_missing/a/b", "./nothing"):
        with pytest.raises(ValueError, match="no such folder"):
            load_eval_model(spec, device="cpu")


def test_init_from_missing_run_folder_fails_fast(in_tmp: Path, no_hub: None) -> None:
    start = time.perf_counter()
    with pytest.raises(
        ValueError, match=r"model.init_from: cannot read runs_xyz_missing/shape: no such"
    ):
        open_init_source("runs_xyz_missing/shape")
    assert time.perf_counter() - start < 2.0


def test_hub_error_ends_in_one_period(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'. Check your connection.")

    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", offline)
    with pytest.raises(ValueError, match="could not read the config of Hub model") as info:
        model_type_of("some-org-xyz/some-model-xyz")
    assert ".." not in str(info.value)
