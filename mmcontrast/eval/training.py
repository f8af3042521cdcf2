"""Evaluation during and after training: the method's own tasks on its held-out split.

The training loop calls :func:`evaluate_during_training` through its ``evaluate`` hook
(:mod:`mmcontrast.pipeline` wires it). It scores ``method.trained_model()`` with the tasks the
method declares (``method.eval_tasks()``), through the same task functions as ``mmcontrast
eval``, on the recipe's ``data.eval_split`` (kNN banks and probes train on
``data.train_split``), with the images embedded in shards across the training processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmcontrast.eval.adapters.mmcontrast_run import MmcontrastAdapter
from mmcontrast.eval.data import EvalData
from mmcontrast.eval.report import format_metrics
from mmcontrast.eval.tasks import TASKS, EvalOptions, TaskRun
from mmcontrast.methods import Method


def evaluate_during_training(
    method: Method, output_dir: Path | None, step: int, accelerator: Any = None
) -> dict[str, float]:
    """Metrics of every task of ``method.eval_tasks()`` (keys merged), written to
    ``output_dir`` (the main process's; None elsewhere). No held-out split: no metrics."""
    cfg = method.cfg
    tasks = method.eval_tasks()
    if not cfg.data.eval_split or not tasks:
        return {}
    data = EvalData(
        name=cfg.data.path or "",
        config=cfg.data,
        split=cfg.data.eval_split,
        train_split=cfg.data.train_split,
    )
    options = EvalOptions(
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
        ks=tuple(cfg.eval.ks),
        knn_k=tuple(cfg.eval.knn_k),
        knn_temperature=cfg.eval.knn_temperature,
        max_samples_by_split={
            cfg.data.train_split: cfg.data.max_train_samples,
            cfg.data.eval_split: cfg.data.max_eval_samples,
        },
        grid_queries=cfg.eval.grid_queries if cfg.eval.grid_png else 0,
    )
    device = next(method.parameters()).device
    model = MmcontrastAdapter("training", device, method)
    details = {"step": step, "method": cfg.method}
    run = TaskRun(model, data, options, output_dir, details, accelerator=accelerator)
    metrics: dict[str, float] = {}
    with torch.no_grad():
        for task in tasks:
            metrics.update(TASKS.get(task)(run))
    if output_dir is not None and metrics:
        print(f"evaluation at step {step}:\n{format_metrics(metrics)}")
    return metrics
