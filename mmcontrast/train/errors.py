"""Errors of the training loop that the command line reports without a traceback."""

from __future__ import annotations


class NonFiniteTraining(RuntimeError):
    """The loss, the gradients or the weights stopped being finite (``train.nonfinite``).

    Raised before anything non-finite is saved: the run's checkpoints are the last finite
    ones. ``mmcontrast train`` prints the message and exits with status 3.
    """

    exit_code = 3
