"""Evaluation: retrieval metrics (CLIP_benchmark definitions), pictures, run evaluation."""

from mmcontrast.eval.retrieval import format_table, retrieval_metrics

__all__ = ["format_table", "retrieval_metrics"]
