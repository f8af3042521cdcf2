"""scripts/bench_data.py runs end to end on tiny towers (table and streamed shards)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import ROOT

SCRIPT = ROOT / "scripts" / "bench_data.py"


@pytest.mark.parametrize("streamed", [False, True])
def test_bench_data_prints_loader_and_model_rates(
    tiny_run: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], streamed: bool
) -> None:
    spec = importlib.util.spec_from_file_location("bench_data", SCRIPT)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--workers", "0", "1", "--batches", "2", "--steps", "1", "--warmup", "1"]
    for override in [*tiny_run, "model.vision.weights=null"]:
        argv += ["--set", override]
    if streamed:
        argv += ["--stream-from", str(tmp_path / "shards")]
    bench.main(argv)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert len(rows) == 2 and "model step alone" in out
    assert all(("streamed shards" in r) == streamed for r in rows)
    assert all(
        float(r.split("|")[3]) > 0 and r.rstrip(" |").endswith(("loader", "model")) for r in rows
    )
