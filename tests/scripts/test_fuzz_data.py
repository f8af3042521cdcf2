"""scripts/fuzz_data.py --short: every bad row skipped once and named, nothing crashes."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from helpers import ROOT

SCRIPT = ROOT / "scripts" / "fuzz_data.py"


def load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("fuzz_data", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_fuzz_data_short_run_passes(capsys: pytest.CaptureFixture[str]) -> None:
    fuzz = load_script()
    status = fuzz.main(["--short"])
    out = capsys.readouterr().out
    assert "MISMATCH" not in out, out
    assert status == 0
    assert out.rstrip().endswith("rows tried 48, rows skipped 24 (expected 24), crashes 0")


def test_every_kind_of_row_is_planned() -> None:
    fuzz = load_script()
    planned = fuzz.plan_rows(48, 0.5, seed=0)
    assert {row.kind for row in planned} == set(fuzz.KINDS)
    assert sum(row.reason is not None for row in planned) == 24
    with pytest.raises(ValueError, match="at least 8 good rows"):
        fuzz.plan_rows(10, 0.5, seed=0)
