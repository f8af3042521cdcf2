"""Points of the training loop where the layers above it plug in their work.

The loop knows methods, data and checkpoints only; evaluation, pictures and Hub sync live
above it and reach it through these hooks (:mod:`mmcontrast.pipeline` wires them). Every
hook is optional: the loop without hooks trains, checkpoints and saves the final weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcontrast.config import Config
from mmcontrast.methods.base import Method

# (method, output folder on the main process else None, step, accelerator) -> metrics;
# called on every process, with the method in eval mode and the training RNGs untouched.
Evaluate = Callable[[Method, Path | None, int, Any], dict[str, float]]


@dataclass
class TrainHooks:
    """Callbacks of :func:`mmcontrast.train.loop.train`.

    Attributes:
        start: ``(cfg)`` before the run writes anything (check settings, fail early).
        evaluate: held-out metrics every ``eval.every`` steps and at the end (``eval.at_end``).
        checkpoint_saved: ``(cfg, folder, step)`` on the main process after each checkpoint
            but the last step's.
        run_finished: ``(cfg, output_dir, step)`` on the main process once the final weights
            and evaluation are written; returns entries for the run's summary.
    """

    start: Callable[[Config], None] | None = None
    evaluate: Evaluate | None = None
    checkpoint_saved: Callable[[Config, Path, int], None] | None = None
    run_finished: Callable[[Config, Path, int], dict[str, Any]] | None = None
