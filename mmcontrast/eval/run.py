"""Evaluate a trained run folder (or checkpoint) on held-out image-text pairs."""

from __future__ import annotations

from pathlib import Path

from mmcontrast.config import load_recipe
from mmcontrast.data.pairs import load_pairs
from mmcontrast.eval.image_text import evaluate_retrieval
from mmcontrast.eval.retrieval import format_table
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
    if split:
        cfg.data.eval_split = split
    method = build_method(cfg)
    load_weights(method, model_dir)
    table = load_pairs(cfg.data, cfg.data.eval_split or "test", cfg.data.max_eval_samples)
    metrics = evaluate_retrieval(
        method.model,  # type: ignore[arg-type]
        table,
        method.image_transform(train=False),  # type: ignore[operator]
        method.model.text.tokenizer(),  # type: ignore[operator, union-attr]
        batch_size=cfg.eval.batch_size,
        ks=cfg.eval.ks,
        output_dir=output_dir or model_dir / "eval",
        grid_queries=cfg.eval.grid_queries if cfg.eval.grid_png else 0,
        extra={"model": str(model_dir)},
    )
    print(format_table(metrics))
    return metrics
