"""SIGTERM and SIGINT during training: finish the step, write a checkpoint, then stop.

A cluster scheduler preempts a job with SIGTERM and a grace period before SIGKILL; Ctrl-C
sends SIGINT. While training, :class:`StopSignals` turns the first of either into a request
that the loop reads after each optimiser step (never inside an accumulation window, so the
checkpoint it writes resumes exactly). Ctrl-C pressed again stops at once, as it would have
without this (the checkpoints already written are complete: they are written into a
temporary folder and renamed). With several processes every one is asked, since a launcher
may deliver the signal to some of them only. ``torchrun`` (and ``accelerate launch``) pass
a signal on to the training processes and kill them 30 seconds later: the step and the
checkpoint must fit in that time.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import torch

from mmcontrast.distributed import all_reduce_max

logger = logging.getLogger("mmcontrast")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_clock = time.monotonic  # when a signal came (a name of its own, for tests)


class StopSignals:
    """A context manager catching SIGTERM and SIGINT for its duration.

    ``received`` is the first signal's number (None before any). A repeated SIGTERM is the
    same request (a scheduler and a launcher may both pass it on); a SIGINT more than a
    second after the first (Ctrl-C pressed again) stops at once. A signal the process was
    started ignoring (``nohup``, a background job's SIGINT) stays ignored. Outside the main
    thread, where Python cannot install handlers, it catches nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._at = 0.0
        self._logged = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
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
        # no logging here: the handler may interrupt a write to the same stream
        if self.received is None:
            self.received, self._at = signum, _clock()
            return
        if signum != signal.SIGINT or _clock() - self._at < 1.0:
            return  # the same request again
        previous = self._previous.get(signum)
        self.__exit__(None, None, None)
        if callable(previous):
            previous(signum, frame)
            return
        raise KeyboardInterrupt

    def requested(self, accelerator: Any) -> int | None:
        """The signal to stop for, agreed by every process (a collective with several:
        every process calls it at the same step); None to go on."""
        if self.received is not None and not self._logged:
            self._logged = True
            name = signal.Signals(self.received).name
            again = " (Ctrl-C again to stop at once)" if self.received == signal.SIGINT else ""
            logger.warning("%s received: writing a checkpoint after this step%s", name, again)
        value = torch.tensor(float(self.received or 0), device=accelerator.device)
        return int(all_reduce_max(value).item()) or None
