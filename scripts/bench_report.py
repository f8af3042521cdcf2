"""What the benchmark scripts share: markdown tables, the CPU's name, the command as run,
and replacing a script's own section of ``scripts/BENCHMARKS.md``.

A benchmark prints its results. It replaces its section of ``scripts/BENCHMARKS.md`` only
when run with ``--write`` (:func:`add_write_flag`, :func:`publish`), so that trial runs,
tests and runs on another machine never overwrite the recorded table.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = ROOT / "scripts" / "BENCHMARKS.md"
WRITE_FLAG = "--write"  # the option that lets a script replace its section of MARKDOWN


def markdown_table(rows: list[dict[str, Any]], cols: list[tuple[str, Callable[[Any], str]]]) -> str:
    """A markdown table: one column per ``(header, cell function of a row)``."""
    lines = ["| " + " | ".join(name for name, _ in cols) + " |"]
    lines.append("| " + " | ".join("---" for _ in cols) + " |")
    lines += ["| " + " | ".join(cell(r) for _, cell in cols) + " |" for r in rows]
    return "\n".join(lines)


def text_table(
    rows: list[dict[str, Any]], cols: list[tuple[str, Callable[[Any], str]]], left: int = 1
) -> str:
    """A plain-text table for the terminal: the first ``left`` columns left-aligned, the rest right."""
    cells = [[name for name, _ in cols]] + [[cell(r) for _, cell in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in cells]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def command_line(script: str, argv: list[str] | None = None) -> str:
    """This run's command as typed from the repository root (``script`` relative to it;
    ``argv`` default ``sys.argv[1:]``), without ``--write``: the command that reproduces
    the table."""
    exe = Path(sys.executable)
    exe = exe.relative_to(ROOT) if exe.is_relative_to(ROOT) else Path("python")
    args = sys.argv[1:] if argv is None else argv
    return shlex.join([str(exe), script, *(a for a in args if a != WRITE_FLAG)])


def add_write_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--write`` option every benchmark script takes; without it a script only prints."""
    parser.add_argument(
        WRITE_FLAG,
        action="store_true",
        help="replace this benchmark's section of scripts/BENCHMARKS.md (default: print only)",
    )


def publish(heading: str, section: str, write: bool, path: Path | None = None) -> None:
    """Writes ``section`` under ``heading`` of ``path`` (default ``scripts/BENCHMARKS.md``)
    when ``write`` is true (the script's ``--write``); otherwise says how to."""
    path = path or MARKDOWN
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    if not write:
        print(f"\nnot written ({WRITE_FLAG} replaces the '{heading[3:]}' section of {where})")
        return
    write_section(heading, section, path)
    print(f"\nwrote the '{heading[3:]}' section of {where}")


def write_section(heading: str, section: str, path: Path = MARKDOWN) -> None:
    """Replaces the section under ``heading`` (up to the next '## ' heading), or appends it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), None)
        after = "\n".join(lines[end:]) + "\n" if end is not None else ""
        before = "\n".join(lines[:start]).rstrip() + "\n\n"
    else:
        before, after = text.rstrip() + "\n\n", ""
    path.write_text(before + section + ("\n" + after if after else ""))
