"""SIGTERM and SIGINT during training: finish the step, write a checkpoint, then stop.

A cluster scheduler preempts a job with SIGTERM and a grace period before SIGKILL; Ctrl-C
sends SIGINT. While training, :class:`StopSignals` turns the first of either into a request
that the loop reads after each optimiser step (never inside an accumulation window, so the
checkpoint it writes resumes exactly). A second signal stops at once, as the signal would
have without it (the checkpoints already written are complete: they are written into a
temporary folder and renamed). With several processes every one is asked, since a launcher
may deliver the signal to some of them only.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import torch

logger = logging.getLogger("mmcontrast")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """A context manager catching SIGTERM and SIGINT for its duration.

    ``received`` is the first signal's number (None before any). Outside the main thread,
    where Python cannot install handlers, it catches nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # the second one: stop now
            previous = self._previous.get(signum)
            self.__exit__(None, None, None)
            if callable(previous):
                previous(signum, frame)
                return
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        self.received = signum
        name = signal.Signals(signum).name
        message = (
            f"{name} received: finishing this step, then writing a checkpoint "
            f"(send it again to stop at once)"
        )
        logger.warning(message)

    def requested(self, accelerator: Any) -> int | None:
        """The signal to stop for, agreed by every process (a collective with several:
        every process calls it at the same step); None to go on."""
        if accelerator.num_processes == 1:
            return self.received
        value = torch.tensor(float(self.received or 0), device=accelerator.device)
        agreed = int(accelerator.reduce(value, "max").item())
        return agreed or None
