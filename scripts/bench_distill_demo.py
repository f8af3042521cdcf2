"""The distillation demonstration's figures (``make distill-demo``), from its run folders.

``make distill-demo`` trains one student twice at the same budget (recipe ``distill-emoji``:
the quickstart's EfficientNet-Lite0 locked, MiniLM cut to its first 2 layers): with the
quickstart's export as teacher (CLIP + CLIP-KD's relational and feature terms), and alone
(the CLIP term only). This script reads each run's held-out retrieval
(``RUN/eval/retrieval.json``) and the teacher's (``runs/quickstart``) and prints recall@1,
5 and 10 in both directions and what the teacher added.

    .venv/bin/python scripts/bench_distill_demo.py [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import add_write_flag, command_line, cpu_name, markdown_table, publish, text_table  # noqa: E402

HEADING = "## Distillation demonstration: a 2-layer text tower taught by the quickstart"
RUNS = {  # label -> run folder
    "teacher (quickstart: 6-layer MiniLM)": "runs/quickstart",
    "student alone (2 layers, CLIP loss)": "runs/distill-emoji-alone",
    "student distilled (2 layers, CLIP-KD)": "runs/distill-emoji",
}
KS = (1, 5, 10)


def metrics_of(run: Path) -> dict[str, Any]:
    path = run / "eval" / "retrieval.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run make distill-demo")
    metrics = json.loads(path.read_text())["metrics"]
    row: dict[str, Any] = {}
    for k in KS:
        row[f"t2i@{k}"] = metrics[f"image_retrieval_recall@{k}"]
        row[f"i2t@{k}"] = metrics[f"text_retrieval_recall@{k}"]
    row["mean"] = sum(row.values()) / len(row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_write_flag(parser)
    args = parser.parse_args()
    rows = [{"model": label, **metrics_of(Path(run))} for label, run in RUNS.items()]
    keys = [f"{d}@{k}" for d in ("t2i", "i2t") for k in KS]
    cols = [("model", lambda r: r["model"])] + [
        (key, lambda r, key=key: f"{r[key]:.4f}") for key in [*keys, "mean"]
    ]
    teacher, alone, distilled = rows
    verdicts = [
        f"distillation changes the student's mean recall by "
        f"{100 * (distilled['mean'] - alone['mean']):+.1f} points and R@1 (mean of both "
        f"directions) by {50 * (distilled['t2i@1'] + distilled['i2t@1'] - alone['t2i@1'] - alone['i2t@1']):+.1f}",
        f"the distilled student keeps {100 * distilled['mean'] / teacher['mean']:.0f}% of the "
        f"teacher's mean recall, the student alone {100 * alone['mean'] / teacher['mean']:.0f}%",
    ]
    print(text_table(rows, cols))
    print("\n".join(verdicts))
    section = "\n".join(
        [
            HEADING,
            "",
            f"`make distill-demo`, then `{command_line('scripts/bench_distill_demo.py')}`: "
            f"{cpu_name()}, 2 cores. Held-out emoji retrieval (366 images). Both students: the "
            "quickstart's locked EfficientNet-Lite0 and MiniLM's first 2 of 6 layers, 15 epochs "
            "at the quickstart's settings; the distilled one adds CLIP-KD's relational and "
            "feature terms against the quickstart's cached embeddings (recipe `distill-emoji`).",
            "",
            markdown_table(rows, cols),
            "",
            *[f"- {v}" for v in verdicts],
            "",
        ]
    )
    publish(HEADING, section, args.write)


if __name__ == "__main__":
    main()
