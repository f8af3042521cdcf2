"""The README's vision-recipe table: kNN and linear-probe accuracy on Fashion-MNIST.

Trains every ``recipes/<method>-fashion-mnist.yaml`` (each about 10 minutes on 2 CPU
cores), reads the evaluation each run writes, and adds two reference rows: the same
encoder at random initialisation, and kNN / linear probe on raw pixels. Prints a
markdown table and writes it, with the raw numbers, to ``--output``.

    python scripts/fashion_mnist_table.py                  # everything (~130 minutes)
    python scripts/fashion_mnist_table.py --methods simclr supcon
    python scripts/fashion_mnist_table.py --reuse          # only read finished runs
    python scripts/fashion_mnist_table.py --retrain simclr # train simclr again, read the rest
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from mmcontrast.config import load_recipe
from mmcontrast.data.labelled import load_labelled
from mmcontrast.eval.knn import knn_metrics
from mmcontrast.eval.linear_probe import linear_probe
from mmcontrast.eval.training import evaluate_during_training
from mmcontrast.methods import build_method

ROOT = Path(__file__).resolve().parents[1]
RANDOM_INIT = "random init (resnet_small)"
METHODS = [
    "simclr", "moco-v2", "moco-v3", "byol", "simsiam", "swav", "dino", "barlow-twins", "vicreg",
    "supcon", "instdisc", "pirl",
]  # fmt: skip
COLUMNS = [
    ("knn20_acc1", "kNN top-1 (k=20)"),
    ("knn200_acc1", "kNN top-1 (k=200)"),
    ("lp_acc1", "linear probe"),
]


def recipe(method: str) -> Path:
    return ROOT / "recipes" / f"{method}-fashion-mnist.yaml"


def train_run(method: str, output: Path) -> float:
    """Train one recipe in a subprocess; returns the wall-clock minutes of training."""
    log = output.with_suffix(".log")
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "mmcontrast", "train", str(recipe(method)),
        "--set", f"train.output_dir={output}",
        "--set", "train.overwrite_output_dir=true",
        "--set", "train.progress_bar=false",
        "--set", "eval.at_end=false",  # evaluation is timed separately below
    ]  # fmt: skip
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(command, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    return (time.perf_counter() - start) / 60


def evaluate_run(method: str, output: Path, reuse: bool = False) -> dict[str, float]:
    """Evaluate a finished run (``reuse``: read its evaluation if it is newer than the model)."""
    files = [output / "eval" / f"{task}.json" for task in ("knn", "linear")]
    model = output / "model.safetensors"
    fresh = all(f.is_file() and f.stat().st_mtime > model.stat().st_mtime for f in files)
    if not (reuse and fresh):
        command = [sys.executable, "-m", "mmcontrast", "eval", "--model", str(output)]
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    metrics: dict[str, float] = {}
    for task in ("knn", "linear"):
        metrics.update(json.loads((output / "eval" / f"{task}.json").read_text())["metrics"])
    return metrics


def random_init() -> dict[str, float]:
    """The recipes' encoder (same seed) evaluated without training."""
    cfg = load_recipe(recipe("simclr"), ["train.output_dir=/tmp/mmcontrast-random-init"])
    torch.manual_seed(cfg.train.seed)
    return evaluate_during_training(build_method(cfg).eval(), None, 0)


def raw_pixels() -> dict[str, float]:
    cfg = load_recipe(recipe("simclr"))
    train, test = (load_labelled(cfg.data, split) for split in ("train", "test"))

    def pixels(table) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return table.images.reshape(len(table), -1).float() / 255

    bank, queries = pixels(train), pixels(test)
    metrics = knn_metrics(bank, train.labels(), queries, test.labels(), ks=(20, 200))
    metrics.update(linear_probe(bank, train.labels(), queries, test.labels()))
    return metrics


def table(rows: dict[str, dict[str, float]], minutes: bool = True) -> str:
    """A markdown table; with a raw-pixels row, each encoder's kNN top-1 (k=20) against it
    (and against the random encoder's) in two more columns."""
    pixels = rows.get("raw pixels", {}).get("knn20_acc1")
    random = rows.get(RANDOM_INIT, {}).get("knn20_acc1")
    names = [name for _, name in COLUMNS]
    if pixels is not None and random is not None:
        names += ["kNN k=20 vs random init", "beats raw pixels (kNN k=20)"]
    header = "| encoder | " + " | ".join(names) + (" | training |" if minutes else " |")
    lines = [header, "|" + " --- |" * (len(names) + 1 + minutes)]
    for name, row in rows.items():
        cells = [f"{row[key]:.3f}" if key in row else "-" for key, _ in COLUMNS]
        if len(names) > len(COLUMNS):
            own = name in (RANDOM_INIT, "raw pixels")
            knn = row.get("knn20_acc1")
            cells += ["-", "-"] if own or knn is None else [
                f"{100 * (knn - random):+.1f} points", "yes" if knn > pixels else "no"
            ]  # fmt: skip
        line = f"| {name} | " + " | ".join(cells) + " |"
        if minutes:
            line += f" {row['train_minutes']:.1f} min |" if "train_minutes" in row else " - |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "fashion-mnist-table")
    parser.add_argument("--output", type=Path, default=ROOT / "scripts" / "fashion_mnist_table.md")
    parser.add_argument("--reuse", action="store_true", help="read finished runs, train nothing")
    parser.add_argument(
        "--retrain", nargs="+", choices=METHODS, help="train only these; read the others' runs"
    )
    parser.add_argument("--no-baselines", action="store_true", help="skip the reference rows")
    args = parser.parse_args()

    rows: dict[str, dict[str, float]] = {}
    for method in args.methods:
        output = args.runs / method
        minutes_file = output / "train_minutes.txt"
        trained = not args.reuse and (args.retrain is None or method in args.retrain)
        if trained:
            minutes = train_run(method, output)
            minutes_file.write_text(f"{minutes:.2f}\n")
        rows[method] = evaluate_run(method, output, reuse=not trained)
        if minutes_file.is_file():
            rows[method]["train_minutes"] = float(minutes_file.read_text())
        print(f"{method}: {rows[method]}", flush=True)
    if not args.no_baselines:
        rows[RANDOM_INIT] = random_init()
        rows["raw pixels"] = raw_pixels()
    text = table(rows)
    print(text)
    args.output.write_text(
        "Fashion-MNIST test set, written by `python scripts/fashion_mnist_table.py`.\n\n"
        + text
        + "\n\n```json\n"
        + json.dumps(rows, indent=1)
        + "\n```\n"
    )


if __name__ == "__main__":
    main()
