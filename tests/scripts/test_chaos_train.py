"""The chaos test's short version: a tiny run hit by 5 faults (SIGKILL, SIGTERM, a full
disk), resumed after each, ends equal to the uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import ROOT

SCRIPT = ROOT / "scripts" / "chaos_train.py"


def test_five_faults_survived() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--faults", "5", "--steps", "16", "--seed", "1"],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "faults 5 " in summary and "survived 5," in summary and "crashes 0," in summary
    completed = summary.split("uninterrupted one ")[1].split(",")[0]
    done_runs, runs = completed.split("/")
    assert done_runs == runs and int(runs) >= 1
