"""Model families for evaluation, one small file each; ``load_eval_model(spec)`` picks one."""

from mmcontrast.eval.adapters import (  # noqa: F401  (each file registers its family)
    clip,
    dual_encoder,
    mmcontrast_run,
    open_clip_model,
    siglip,
)
from mmcontrast.eval.adapters.base import MODEL_FAMILIES, EvalModel, PerImage, load_eval_model

__all__ = ["MODEL_FAMILIES", "EvalModel", "PerImage", "load_eval_model"]
