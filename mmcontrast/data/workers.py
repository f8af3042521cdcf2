"""Data-loading worker processes and stop signals.

Ctrl-C sends SIGINT to every process of the terminal's process group, and a cluster
scheduler may send SIGTERM to every process of a job: the DataLoader workers as well as the
training process. A worker that dies of it (or, for SIGINT, quietly ends) leaves the training
process unable to finish the step it is in, and PyTorch's check for dead workers raises in
the middle of it. The training loop decides when to stop (after the step, with a checkpoint:
:mod:`mmcontrast.train.preemption`), so its workers ignore both signals; they still end
with the loader, or when the training process is gone.
"""

from __future__ import annotations

import signal


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the loaders a training run uses (its batches, evaluations and
    feature caching): SIGINT and SIGTERM are ignored."""
    del worker_id
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
