"""A training run as ``mmcontrast train`` does it: the loop with evaluation, pictures and Hub
sync wired in through its hooks.

:func:`mmcontrast.train.loop.train` knows methods, data and checkpoints only; this module,
above it and above evaluation and the Hub code, connects them:

* ``start``: check evaluation and Hub settings, and compute (once, cached) the teacher's
  embeddings a distillation run asks for (``Method.teacher_request``);
* ``evaluate``: the method's own tasks on its held-out split (:mod:`mmcontrast.eval.training`);
* ``checkpoint_saved``: push the checkpoint when ``hub.push_to_hub`` is set;
* ``run_finished``: the training curves picture, then the final push.

Example:
    >>> from mmcontrast.config import load_recipe
    >>> summary = train(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate import PartialState

from mmcontrast.config import Config
from mmcontrast.eval.plots import save_training_curves
from mmcontrast.eval.teacher import ensure_teacher_embeddings
from mmcontrast.eval.training import check_eval_tasks, evaluate_during_training
from mmcontrast.hub.sync import check_hub_config, push_snapshot
from mmcontrast.registry import METHODS
from mmcontrast.train.loop import TrainHooks
from mmcontrast.train.loop import train as train_loop


def default_hooks() -> TrainHooks:
    """Evaluation, training curves and Hub sync, as the ``train`` command runs them."""
    return TrainHooks(
        start=_start,
        evaluate=evaluate_during_training,
        checkpoint_saved=_push_checkpoint,
        run_finished=_finish,
    )


def train(cfg: Config, resume: str | None = None) -> dict[str, Any]:
    """Train ``cfg`` with :func:`default_hooks`; ``resume``: a checkpoint folder or ``latest``."""
    return train_loop(cfg, resume, default_hooks())


def _start(cfg: Config) -> None:
    check_eval_tasks(cfg)
    check_hub_config(cfg)
    request = METHODS.get(cfg.method).teacher_request(cfg)
    if request is not None:
        with PartialState().main_process_first():  # the others then read what it wrote
            ensure_teacher_embeddings(cfg, request)


def _push_checkpoint(cfg: Config, folder: Path, step: int) -> None:
    push_snapshot(cfg, folder, step, final=False)


def _finish(cfg: Config, output_dir: Path, step: int) -> dict[str, Any]:
    save_training_curves(
        output_dir / "curves.png",
        read_history(output_dir / "history.jsonl"),
        read_history(output_dir / "eval_history.jsonl"),
    )
    return {"pushed": push_snapshot(cfg, output_dir, step, final=True)}


def read_history(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines history; a step logged twice (a resumed run) keeps the last."""
    if not path.is_file():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]
