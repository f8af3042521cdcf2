"""Evaluation of any CLIP-like model: retrieval, zero-shot, kNN, linear probe, pictures.

The metric functions take embeddings and follow CLIP_benchmark's definitions; the
adapters (``load_eval_model``) turn any supported model into embeddings; the tasks and
``evaluate_models`` tie them to data, result files and the ``mmcontrast eval`` command.
"""

from mmcontrast.eval.classification import classification_metrics, confusion_matrix
from mmcontrast.eval.knn import knn_metrics
from mmcontrast.eval.linear_probe import linear_probe
from mmcontrast.eval.retrieval import format_table, grouped_retrieval_metrics, retrieval_metrics
from mmcontrast.eval.templates import TEMPLATE_SETS, resolve_templates
from mmcontrast.eval.zero_shot import (
    build_zero_shot_classifier,
    zero_shot_evaluate,
    zero_shot_logits,
    zero_shot_metrics,
)

__all__ = [
    "TEMPLATE_SETS",
    "build_zero_shot_classifier",
    "classification_metrics",
    "confusion_matrix",
    "format_table",
    "grouped_retrieval_metrics",
    "knn_metrics",
    "linear_probe",
    "resolve_templates",
    "retrieval_metrics",
    "zero_shot_evaluate",
    "zero_shot_logits",
    "zero_shot_metrics",
]
