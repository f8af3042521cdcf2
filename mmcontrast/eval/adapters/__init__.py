"""Model families for evaluation, one small file each registering its family in
``MODEL_FAMILIES``; ``load_eval_model(spec)`` picks one."""

from mmcontrast.eval.adapters.base import MODEL_FAMILIES, EvalModel, PerImage, load_eval_model

__all__ = ["MODEL_FAMILIES", "EvalModel", "PerImage", "load_eval_model"]
