"""Evaluate several models on several tasks in one call: result JSON per model and task,
a readable table per result, and one comparison table.

Example:
    >>> results = evaluate_models(["runs/quickstart"], ["retrieval"], data="emoji")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmcontrast.eval.adapters import load_eval_model
from mmcontrast.eval.adapters.base import EvalModel
from mmcontrast.eval.adapters.mmcontrast_run import MmcontrastAdapter
from mmcontrast.eval.data import EvalData, resolve_data
from mmcontrast.eval.report import comparison_table, finite, format_metrics, versions
from mmcontrast.eval.tasks import TASKS, EvalOptions, TaskRun
from mmcontrast.eval.training import extra_tasks

CLASSIFICATION_DATA = ("emoji-category", "emoji-subcategory", "fashion_mnist", "fashion-mnist")


def default_tasks(model: EvalModel, data: EvalData, own_data: bool = False) -> list[str]:
    """What a model is usually scored on: a run's own evaluation (on its own data, or any
    data for a vision run), else by data kind."""
    if isinstance(model, MmcontrastAdapter) and (own_data or not model.has_text):
        own = list(model.method.eval_tasks())
        if own:
            return own
    if not model.has_text:
        return ["knn"]
    if data.name in CLASSIFICATION_DATA:
        return ["zeroshot"]
    return ["retrieval"]


def model_data(
    model: EvalModel,
    data: str | None,
    split: str | None,
    train_split: str | None,
    columns: dict[str, str | None],
    class_names: list[str] | None,
) -> EvalData:
    """The data to score ``model`` on: ``data``, or an mmcontrast run's own data."""
    base = model.method.cfg.data if isinstance(model, MmcontrastAdapter) else None
    if data is None and base is None:
        raise ValueError(
            f"--data is needed for {model.spec}: only mmcontrast runs know their data "
            "(give a folder, a datasets name, or a built-in: emoji, emoji-category, "
            "emoji-subcategory, fashion_mnist)"
        )
    resolved = resolve_data(
        data or base.path,  # type: ignore[union-attr]
        split,
        train_split,
        base=base if data is None else None,
        **columns,
    )
    if data is None and isinstance(model, MmcontrastAdapter):
        classes = model.method.zero_shot_classes()
        if classes is not None:  # the classes and prompts the method trained with (FLYP)
            resolved.class_labels, resolved.class_names = classes.labels, classes.names
            resolved.templates = classes.templates
    if class_names is not None:
        resolved.class_names = class_names
    return resolved


RUN_SETTINGS = ("ks", "knn_k", "knn_temperature")  # EvalOptions a run's recipe sets (eval.*)


def run_options(model: EvalModel, options: EvalOptions, names: Sequence[str]) -> EvalOptions:
    """``options`` with the settings ``names`` taken from an mmcontrast run's ``eval``
    section, so a run is scored as it was during training (other models: unchanged)."""
    if not isinstance(model, MmcontrastAdapter):
        return options
    recipe = model.method.cfg.eval
    values: dict[str, Any] = {}
    for name in names:
        value = getattr(recipe, name)
        values[name] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(options, **values)


def slug(spec: str) -> str:
    """A folder name for a model spec: ``runs/quickstart`` -> ``runs_quickstart``."""
    return re.sub(r"[^\w.-]+", "_", spec.strip("/")).strip("_") or "model"


def evaluate_models(
    models: Sequence[str],
    tasks: Sequence[str] | None = None,
    data: str | None = None,
    output_dir: str | Path | None = None,
    options: EvalOptions | None = None,
    split: str | None = None,
    train_split: str | None = None,
    columns: dict[str, str | None] | None = None,
    class_names: list[str] | None = None,
    device: str | None = None,
    run_settings: Sequence[str] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores every model on every task; returns ``{model: {task: metrics}}``.

    With one model, results go to ``output_dir`` (default: an mmcontrast run's ``eval``
    folder, else ``eval_results``); with several, to one subfolder per model, plus
    ``comparison.md`` and ``comparison.json`` in ``output_dir``. The ``options`` named in
    ``run_settings`` (of ``ks``, ``knn_k``, ``knn_temperature``) come from an mmcontrast
    run's recipe when scoring one; by default those ``options`` leaves at their defaults.
    """
    options = options or EvalOptions()
    if run_settings is None:
        defaults = EvalOptions()
        run_settings = [n for n in RUN_SETTINGS if getattr(options, n) == getattr(defaults, n)]
    unknown = sorted(set(run_settings) - set(RUN_SETTINGS))
    if unknown:
        raise ValueError(f"run_settings {unknown}: choose among {list(RUN_SETTINGS)}")
    for task in tasks or []:
        TASKS.get(task)  # unknown task names fail before any model loads
    if output_dir is None:
        single_run = len(models) == 1 and MmcontrastAdapter.matches(models[0])
        output_dir = Path(models[0]) / "eval" if single_run else Path("eval_results")
    output_dir = Path(output_dir)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for spec in models:
        model = load_eval_model(spec, device)
        model.spec = spec
        eval_data = model_data(model, data, split, train_split, columns or {}, class_names)
        folder = output_dir / slug(spec) if len(models) > 1 else output_dir
        model_options = run_options(model, options, run_settings)
        details: dict[str, Any] = {
            "model": model.describe(),
            "eval_data": eval_data.describe(),
            "options": dataclasses.asdict(model_options),
            "versions": versions(),
        }
        run = TaskRun(model, eval_data, model_options, folder, details)
        results[spec] = {}
        for task in tasks or default_tasks(model, eval_data, own_data=data is None):
            metrics = TASKS.get(task)(run)
            results[spec][task] = metrics
            print(f"{spec} | {task} on {eval_data.name} ({eval_data.split}):")
            print(format_metrics(metrics) + "\n")
        if isinstance(model, MmcontrastAdapter) and data is None and not tasks:
            for extra in extra_tasks(model.method.cfg):  # the recipe's eval.tasks, as in training
                extra_options = dataclasses.replace(
                    model_options, max_samples=extra.max_samples, max_samples_by_split={},
                    templates=extra.templates or model_options.templates,
                )  # fmt: skip
                extra_details = {
                    **details,
                    "eval_data": extra.data.describe(),
                    "options": dataclasses.asdict(extra_options),
                }
                extra_run = TaskRun(
                    model, extra.data, extra_options, folder / extra.name, extra_details
                )
                metrics = TASKS.get(extra.task)(extra_run)
                results[spec][f"{extra.name}/{extra.task}"] = metrics
                print(f"{spec} | {extra.name} ({extra.task} on {extra.data.name}):")
                print(format_metrics(metrics) + "\n")
    if len(results) > 1 or any(len(by_task) > 1 for by_task in results.values()):
        table = comparison_table(results)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "comparison.md").write_text(table + "\n")
        (output_dir / "comparison.json").write_text(json.dumps(finite(results), indent=2))
        print(table)
    print(f"results in {output_dir}")
    return results
