"""Ways a training run stops early that the command line reports without a traceback.

Each carries the exit status ``mmcontrast train`` returns, so a job script can tell them
apart: 3, the run diverged; 130 (Ctrl-C) or 143 (SIGTERM), stopped by a signal after
writing a checkpoint to ``--resume`` from.
"""

from __future__ import annotations

import signal


class TrainingStopped(RuntimeError):
    """The run stopped before its last step; ``exit_code`` is the command's exit status."""

    exit_code = 1


class NonFiniteTraining(TrainingStopped):
    """The loss, the gradients or the weights stopped being finite (``train.nonfinite``).

    Raised before anything non-finite is saved: the run's checkpoints are the last finite
    ones.
    """

    exit_code = 3


class TrainingInterrupted(TrainingStopped):
    """SIGTERM or SIGINT arrived; the loop finished its step and wrote a checkpoint.

    The exit status is the shell's for that signal (128 + its number: 143 for SIGTERM, 130
    for SIGINT), so a scheduler's requeue logic reads it as a preemption.
    """

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
