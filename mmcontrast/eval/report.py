"""Result files and readable text: per-task JSON, metric tables, model comparison tables."""

from __future__ import annotations

import json
import math
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mmcontrast.eval.retrieval import format_table

RETRIEVAL_PREFIXES = ("image_retrieval_", "text_retrieval_")
PACKAGES = ("mmcontrast", "torch", "transformers", "open_clip_torch", "datasets")


def format_metrics(metrics: dict[str, float]) -> str:
    """Metrics as text: a retrieval table per prefix (the whole split, then ``GROUP/`` or
    ``TASK/``), then one line per other metric."""
    tables: dict[str, dict[str, float]] = {}
    others: dict[str, float] = {}
    for key, value in metrics.items():
        prefix, _, name = key.rpartition("/")
        if name.startswith(RETRIEVAL_PREFIXES):
            tables.setdefault(prefix, {})[name] = value
        else:
            others[key] = value
    parts = [f"{p}:\n{format_table(t)}" if p else format_table(t) for p, t in tables.items()]
    if others:
        width = max(len(k) for k in others)
        parts.append("\n".join(f"{k:<{width}}  {v:.4f}" for k, v in others.items()))
    return "\n".join(parts)


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the numbers."""
    import torch

    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    found["torch"] = torch.__version__  # with its build tag (+cu130, +cpu)
    return found


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float, at any depth, as None (JSON's null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def write_result(
    output_dir: str | Path, task: str, metrics: dict[str, float], details: dict[str, Any]
) -> Path:
    """``OUTPUT/TASK.json``: ``{"task", **details, "metrics"}`` (non-finite values as null)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{task}.json"
    record = {"task": task, **details, "metrics": finite(metrics)}
    path.write_text(json.dumps(record, indent=2, default=str))
    return path


def comparison_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table, one row per model, one column per (task, headline metric)."""
    columns: list[tuple[str, str]] = []
    for by_task in results.values():
        for task, metrics in by_task.items():
            for key in headline_keys(task, metrics):
                if (task, key) not in columns:
                    columns.append((task, key))
    header = ["model", *(f"{task}: {key}" for task, key in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for model, by_task in results.items():
        cells = [model]
        for task, key in columns:
            value = by_task.get(task, {}).get(key)
            cells.append("-" if value is None or not math.isfinite(value) else f"{value:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline_keys(task: str, metrics: dict[str, float]) -> list[str]:
    """The metrics worth a column: recalls for retrieval, the accuracies of the swap
    test, accuracies and recall otherwise (``NAME/TASK``: a recipe's named ``eval.tasks``)."""
    task = task.rsplit("/", 1)[-1]
    if task == "retrieval":
        return [k for k in metrics if "_recall@" in k]
    if task == "swaps":
        return [k for k in metrics if k.startswith("swap_acc")]
    return [k for k in metrics if "acc1" in k or "acc5" in k or "mean_per_class_recall" in k]
