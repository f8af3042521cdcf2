"""Readable text for any metrics dict: the retrieval table, or aligned name/value rows."""

from __future__ import annotations

from mmcontrast.eval.retrieval import format_table

RETRIEVAL_PREFIXES = ("image_retrieval_", "text_retrieval_")


def format_metrics(metrics: dict[str, float]) -> str:
    retrieval = {k: v for k, v in metrics.items() if k.startswith(RETRIEVAL_PREFIXES)}
    others = {k: v for k, v in metrics.items() if k not in retrieval}
    parts = [format_table(metrics)] if retrieval else []
    if others:
        width = max(len(k) for k in others)
        parts.append("\n".join(f"{k:<{width}}  {v:.4f}" for k, v in others.items()))
    return "\n".join(parts)
