"""The fine-tuning demonstration's figures (``make finetune-demo``), from its run folder.

``make finetune-demo`` fine-tunes the quickstart's export with FLYP (recipe ``flyp-emoji``:
LoRA on the text tower, emoji subcategories of the training concepts as classes) and
scores the WiSE-FT mixes of the start and the result (``mmcontrast wise-ft``). This script
reads ``RUN/wise_ft/wise_ft.json`` and prints, for the held-out concepts and each alpha
(0 = the starting model, 1 = the fine-tuned one): subcategory zero-shot top-1 (the target
task), caption retrieval R@1 (the mean of both directions: what the model knew) and the
mean of the two; then the change fine-tuning made and which mixes beat both ends on the
mean.

    .venv/bin/python scripts/bench_finetune_demo.py runs/flyp-emoji [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import add_write_flag, command_line, cpu_name, markdown_table, publish, text_table  # noqa: E402

TARGET = "acc1"  # the run's own zero-shot task on the held-out concepts
RETRIEVAL = ("captions/image_retrieval_recall@1", "captions/text_retrieval_recall@1")
HEADING = "## Fine-tuning demonstration: FLYP + LoRA and WiSE-FT on held-out emoji"


def rows_of(run: Path) -> list[dict[str, Any]]:
    """One row per alpha: zero-shot top-1, caption R@1 (both directions' mean), their mean."""
    table = json.loads((run / "wise_ft" / "wise_ft.json").read_text())
    rows = []
    for row in table["rows"]:
        metrics = row["metrics"]
        missing = [k for k in (TARGET, *RETRIEVAL) if k not in metrics]
        if missing:
            raise SystemExit(f"{run}/wise_ft/wise_ft.json lacks {missing}: run make finetune-demo")
        retrieval = sum(metrics[k] for k in RETRIEVAL) / len(RETRIEVAL)
        rows.append(
            {
                "alpha": row["alpha"],
                "zeroshot": metrics[TARGET],
                "retrieval": retrieval,
                "mean": (metrics[TARGET] + retrieval) / 2,
            }
        )
    return sorted(rows, key=lambda r: r["alpha"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", default="runs/flyp-emoji")
    add_write_flag(parser)
    args = parser.parse_args()
    rows = rows_of(Path(args.run))
    start = next((r for r in rows if r["alpha"] == 0.0), None)
    end = next((r for r in rows if r["alpha"] == 1.0), None)
    if start is None or end is None:
        raise SystemExit("wise_ft.json needs alphas 0 and 1 (the two ends)")
    best = max(rows, key=lambda r: r["mean"])
    cols = [
        ("alpha", lambda r: f"{r['alpha']:g}" + (" (start)" if r is start else " (fine-tuned)" if r is end else "")),
        ("subcategory zero-shot top-1", lambda r: f"{r['zeroshot']:.4f}"),
        ("caption retrieval R@1", lambda r: f"{r['retrieval']:.4f}"),
        ("mean", lambda r: f"{r['mean']:.4f}" + (" best" if r is best else "")),
    ]  # fmt: skip
    gain = end["zeroshot"] - start["zeroshot"]
    beats = [r for r in rows if r["mean"] > max(start["mean"], end["mean"])]
    verdicts = [
        f"fine-tuning changes held-out zero-shot top-1 by {100 * gain:+.1f} points and caption "
        f"retrieval R@1 by {100 * (end['retrieval'] - start['retrieval']):+.1f}",
        "WiSE-FT mixes above both ends on the mean: "
        + (", ".join(f"alpha {r['alpha']:g}" for r in beats) if beats else "none"),
    ]
    print(text_table(rows, cols))
    print("\n".join(verdicts))
    section = "\n".join(
        [
            HEADING,
            "",
            f"`make finetune-demo`, then `{command_line('scripts/bench_finetune_demo.py')}`: {cpu_name()}, "
            "2 cores. The quickstart's export fine-tuned with FLYP (recipe `flyp-emoji`: LoRA "
            "rank 8 on the text tower, vision tower locked, 5 epochs on the emoji subcategories "
            "of the training concepts), then `mmcontrast wise-ft` at each alpha; all figures on "
            "the held-out concepts. Caption retrieval R@1 is the mean of both directions.",
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
