"""What the training loop prints as it goes: a progress bar on a terminal, plain lines elsewhere.

On a terminal (or in a notebook) a tqdm bar shows step, loss, learning rate and pairs/s.
Written to a file or a cluster job's log, a bar's carriage-return updates pile into lines
of thousands of characters; there, and whenever ``train.progress_bar`` is off, each
``train.log_every`` record becomes one line:

    step 40/200  loss 2.3174  lr 2.50e-04  pairs/s 412.3  eta 0:01:02

Only the main process prints.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm

from mmcontrast.logs import interactive


class Progress:
    """Progress of a run from ``start`` to ``total`` steps; a context manager that closes."""

    def __init__(self, total: int, start: int, bar: bool, main_process: bool) -> None:
        self.total = total
        self.main = main_process
        self.bar: Any = None
        if main_process and bar and interactive():
            self.bar = tqdm(total=total, initial=start, desc="train")
        self._since: tuple[int, float] | None = None  # (step, time) of the first update

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def update(self, step: int) -> None:
        if self._since is None:
            self._since = (step, time.perf_counter())
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def log(self, record: dict[str, Any]) -> None:
        """One ``history.jsonl`` record: the bar's postfix, or a printed line."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{record['loss']:.4f}",
                lr=f"{record['lr']:.2e}",
                pairs_s=f"{record['pairs_per_s']:.1f}",
            )
            return
        print(self.line(record), flush=True)

    def line(self, record: dict[str, Any]) -> str:
        step = int(record["step"])
        first, since = self._since or (step, time.perf_counter())
        elapsed = time.perf_counter() - since
        left = ""
        if step > first and elapsed > 0:
            seconds = (self.total - step) * elapsed / (step - first)
            left = f"  eta {datetime.timedelta(seconds=round(seconds))}"
        return (
            f"step {step}/{self.total}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
            f"pairs/s {record['pairs_per_s']:.1f}{left}"
        )

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Output from elsewhere (an evaluation's) on lines of its own, not on the bar's."""
        if self.bar is None:
            yield
            return
        with tqdm.external_write_mode(file=sys.stderr):
            yield

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
