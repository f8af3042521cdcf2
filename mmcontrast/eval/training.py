"""Evaluation during and after training: the method's own tasks on its held-out split.

The training loop calls :func:`evaluate_during_training` through its ``evaluate`` hook
(:mod:`mmcontrast.pipeline` wires it). It scores ``method.trained_model()`` with the tasks the
method declares (``method.eval_tasks()``), through the same task functions as ``mmcontrast
eval``, on the recipe's ``data.eval_split`` (kNN banks and probes train on
``data.train_split``), with the images embedded in shards across the training processes.

``eval.tasks`` adds tasks on other data beside the method's own (a zero-shot classification
on a reference set, retrieval on another collection), so a fine-tuning run measures what the
starting model knew as well as the target task. Each entry is a mapping::

    {task: zeroshot, data: emoji-subcategory, split: test, name: subcategory}

``task`` is one of ``mmcontrast list tasks``; ``data`` is what ``mmcontrast eval --data``
takes (a built-in, a folder or a ``datasets`` name; default: the recipe's own data);
``split`` / ``train_split`` default to the recipe's; ``templates`` overrides the zero-shot
prompts; ``max_samples`` bounds the rows. Metrics are prefixed ``NAME/`` (default
``DATA-TASK``) and written under ``NAME/`` beside the method's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmcontrast.config import Config
from mmcontrast.eval.adapters.mmcontrast_run import MmcontrastAdapter
from mmcontrast.eval.data import EvalData, resolve_data
from mmcontrast.eval.report import format_metrics
from mmcontrast.eval.tasks import TASKS, EvalOptions, TaskRun
from mmcontrast.methods import Method


def evaluate_during_training(
    method: Method, output_dir: Path | None, step: int, accelerator: Any = None
) -> dict[str, float]:
    """Metrics of every task of ``method.eval_tasks()`` on the held-out split and of the
    recipe's ``eval.tasks`` (keys merged), written to ``output_dir`` (the main process's; None
    elsewhere). Neither a held-out split nor ``eval.tasks``: no metrics."""
    cfg = method.cfg
    tasks = method.eval_tasks()
    if not (cfg.data.eval_split and tasks) and not cfg.eval.tasks:
        return {}
    if not cfg.data.eval_split:
        tasks = ()
    data = EvalData(
        name=cfg.data.path or "",
        config=cfg.data,
        split=cfg.data.eval_split or "",
        train_split=cfg.data.train_split,
    )
    classes = method.zero_shot_classes()
    if classes is not None:  # prompt as the method trained (FLYP)
        data.class_labels, data.class_names = classes.labels, classes.names
        data.templates = classes.templates
    options = EvalOptions(
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
        ks=tuple(cfg.eval.ks),
        knn_k=tuple(cfg.eval.knn_k),
        knn_temperature=cfg.eval.knn_temperature,
        max_samples_by_split={
            cfg.data.train_split: cfg.data.max_train_samples,
            cfg.data.eval_split or "": cfg.data.max_eval_samples,
        },
        grid_queries=cfg.eval.grid_queries if cfg.eval.grid_png else 0,
    )
    device = next(method.parameters()).device
    model = MmcontrastAdapter("training", device, method)
    details = {"step": step, "method": cfg.method}
    run = TaskRun(
        model, data, options, output_dir, details, accelerator=accelerator,
        knn_bank=method.knn_bank(),
    )  # fmt: skip
    metrics: dict[str, float] = {}
    with torch.no_grad():
        for task in tasks:
            metrics.update(TASKS.get(task)(run))
        for extra in extra_tasks(cfg):
            extra_run = TaskRun(
                model,
                extra.data,
                dataclasses.replace(options, max_samples=extra.max_samples,
                                    max_samples_by_split={}, templates=extra.templates),
                output_dir / extra.name if output_dir is not None else None,
                details,
                accelerator=accelerator,
            )  # fmt: skip
            result = TASKS.get(extra.task)(extra_run)
            metrics.update({f"{extra.name}/{key}": value for key, value in result.items()})
    if output_dir is not None and metrics:
        print(f"evaluation at step {step}:\n{format_metrics(metrics)}")
    return metrics


EXTRA_KEYS = ("task", "data", "split", "train_split", "name", "templates", "max_samples")


@dataclass
class ExtraTask:
    """One entry of ``eval.tasks``, resolved."""

    task: str
    name: str
    data: EvalData
    templates: str | list[str] | None
    max_samples: int | None


def extra_tasks(cfg: Config) -> list[ExtraTask]:
    """The recipe's ``eval.tasks``, checked and resolved (built-in data may be built once).

    Raises:
        ValueError: An entry that is not a mapping, misses ``task``, names an unknown task
            or key, or two entries share a name.
    """
    resolved: list[ExtraTask] = []
    for i, entry in enumerate(cfg.eval.tasks):
        where = f"eval.tasks[{i}]"
        if not isinstance(entry, dict) or "task" not in entry:
            raise ValueError(
                f"{where} must be a mapping with at least a task, e.g. "
                "{task: zeroshot, data: emoji-subcategory}; got " + repr(entry)
            )
        unknown = sorted(set(entry) - set(EXTRA_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} (valid: {', '.join(EXTRA_KEYS)})")
        task = str(entry["task"])
        TASKS.get(task)  # an unknown task fails here, naming the nearest
        source = str(entry.get("data") or cfg.data.path)
        data = resolve_data(
            source,
            split=entry.get("split"),
            train_split=entry.get("train_split"),
            base=cfg.data if source == cfg.data.path else None,
        )
        name = str(entry.get("name") or f"{Path(source).name}-{task}")
        if any(other.name == name for other in resolved):
            raise ValueError(f"{where}: the name {name!r} is used twice; give each a name")
        templates = entry.get("templates")
        resolved.append(ExtraTask(task, name, data, templates, entry.get("max_samples")))
    return resolved


def check_eval_tasks(cfg: Config) -> None:
    """Fail before training on an ``eval.tasks`` entry that cannot run (see :func:`extra_tasks`)."""
    extra_tasks(cfg)
