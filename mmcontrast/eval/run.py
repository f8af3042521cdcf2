"""Evaluate a trained run folder (or checkpoint) on held-out image-text pairs."""

from __future__ import annotations

from pathlib import Path

from mmcontrast.config import load_recipe
from mmcontrast.eval.report import format_metrics
from mmcontrast.train.checkpoint import load_weights


def evaluate_run(
    model_dir: str | Path,
    data: str | None = None,
    split: str | None = None,
    output_dir: str | Path | None = None,
    overrides: list[str] | None = None,
) -> dict[str, float]:
    """Rebuild the run's model from its ``config.yaml``, load its weights, run retrieval."""
    from mmcontrast.train.loop import build_method

    model_dir = Path(model_dir)
    if not (model_dir / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{model_dir} holds no config.yaml: pass a run folder or a checkpoint folder"
        )
    # towers are rebuilt from config only; the run's weights replace them
    fixed = [
        "model.vision.pretrained=false",
        "model.text.pretrained=false",
        "model.vision.weights=null",
        "model.text.weights=null",
    ]
    cfg = load_recipe(model_dir / "config.yaml", fixed + list(overrides or []))
    if data:
        cfg.data.path = data
    cfg.data.eval_split = split or cfg.data.eval_split or "test"
    method = build_method(cfg)
    load_weights(method, model_dir)
    metrics = method.evaluate(
        Path(output_dir or model_dir / "eval"), extra={"model": str(model_dir)}
    )
    print(format_metrics(metrics))
    return metrics
