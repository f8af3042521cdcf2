"""`mmcontrast train` sent a real SIGTERM: one process, and 2 processes under `accelerate
launch` (the launcher forwards the signal); every process writes its part of
one checkpoint and the command exits with status 143.
Without a terminal, progress is one plain line per ``log_every`` steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import QUICKSTART, RECIPES

from mmcontrast.train.checkpoint import list_checkpoints, read_state


def command(tiny_run: list[str], output: Path, *launcher: str) -> list[str]:
    overrides = [
        *tiny_run,
        "model.vision.weights=null",
        "model.vision.lock=false",
        "train.cache_locked_features=false",
        "train.max_steps=100000",
        "train.log_every=1",
        "eval.at_end=false",
        "data.num_workers=0",
        f"train.output_dir={output}",
    ]
    args = [*launcher, "-m", "mmcontrast", "train", str(QUICKSTART)]
    for override in overrides:
        args += ["--set", override]
    return [sys.executable, *args]


def run_until(
    argv: list[str], text: str, timeout: float = 240
) -> tuple[subprocess.Popen, list[str]]:
    """Start ``argv`` and read its output until a line holds ``text``."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return process, lines
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"no line with {text!r}:\n{''.join(lines)[-4000:]}")


def finish(process: subprocess.Popen, lines: list[str], timeout: float = 120) -> str:
    try:
        rest, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        rest, _ = process.communicate()
        pytest.fail(f"did not stop in {timeout:.0f} s after SIGTERM:\n{''.join(lines)}{rest}")
    return "".join(lines) + rest


def test_sigterm_writes_a_checkpoint_and_exits_143(tiny_run: list[str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    process, lines = run_until(command(tiny_run, run), "step 3/100000")
    process.send_signal(signal.SIGTERM)
    output = finish(process, lines)
    assert process.returncode == 143, output
    assert "stopped: SIGTERM received" in output and "--resume" in output
    (folder,) = list_checkpoints(run / "checkpoints")
    assert read_state(folder).step >= 3
    assert "\r" not in output  # plain lines, no progress bar updates
    assert any(line.startswith("step 2/100000  loss ") and " eta " in line for line in lines)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_with_loader_workers(
    tiny_run: list[str], tmp_path: Path, signum: int
) -> None:
    """Ctrl-C, or a scheduler signalling every process of the job, reaches the DataLoader
    workers too: they go on, the step (2 batches here) finishes, a checkpoint is written."""
    run = tmp_path / "run"
    argv = command(tiny_run, run)
    argv += ["--set", "data.num_workers=2", "--set", "train.gradient_accumulation_steps=2"]
    argv += ["--set", "train.batch_size=2"]  # 16 batches an epoch: workers busy mid-epoch
    process, lines = run_until(argv, "step 2/100000")
    os.killpg(process.pid, signum)  # every process of the group, as a terminal's Ctrl-C
    output = finish(process, lines)
    assert process.returncode == 128 + signum, output
    name = signal.Signals(signum).name
    assert f"stopped: {name} received" in output and "Traceback" not in output
    (folder,) = list_checkpoints(run / "checkpoints")
    assert read_state(folder).step >= 2


@pytest.mark.slow
def test_sigterm_to_accelerate_launch_stops_every_process(
    tiny_run: list[str], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    launcher = (
        "-m", "accelerate.commands.accelerate_cli", "launch",
        "--config_file", str(RECIPES / "accelerate" / "cpu-2proc.yaml"),
    )  # fmt: skip
    process, lines = run_until(command(tiny_run, run, *launcher), "step 2/100000")
    process.send_signal(signal.SIGTERM)  # the launcher only, as a container runtime does
    output = finish(process, lines)
    assert process.returncode == 143, output
    assert output.count("stopped: SIGTERM received") == 2, output  # one per process
    (folder,) = list_checkpoints(run / "checkpoints")
    assert read_state(folder).step >= 2
    assert not list(run.glob("checkpoints/.partial-*"))
