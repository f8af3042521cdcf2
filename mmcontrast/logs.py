"""Logging for the command line: warnings by default, mmcontrast's debug lines with ``-v``;
whether a person watches the output (progress bars) or it goes to a file (plain lines, and
no progress bars from the Hugging Face libraries either).

``-v`` turns on mmcontrast's own debug logs and INFO from the libraries, never the HTTP
clients' debug logs (``httpx``, ``httpcore``, ``urllib3``, ``huggingface_hub``'s request
lines), which carry request headers and so could carry a Hub token. Every record, whichever
logger and handler it goes to, is made with anything shaped like a Hugging Face token
(``hf_`` and 30 or more letters or digits) or an ``Authorization`` header's value masked
(:func:`redacting_factory`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

# loggers whose debug output holds request headers or URLs with credentials
HTTP_LOGGERS = ("httpx", "httpcore", "urllib3", "requests", "huggingface_hub", "hf_xet", "fsspec")

TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}")
AUTHORIZATION = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(bearer\s+)?[^\s'\",}]+")


def redact(text: str) -> str:
    """``text`` with Hub tokens and Authorization header values masked."""
    text = TOKEN.sub("hf_***", text)
    return AUTHORIZATION.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}***", text)


def redacting_factory(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A log-record factory that masks tokens as each record is made, so that every handler
    sees the masked message: the root's, and those the libraries add to their own loggers."""
    if getattr(make, "redacts", False):
        return make

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: left for logging to report
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    return factory


def configure_logging(verbose: bool) -> None:
    """Log to stderr: WARNING and above, or with ``verbose`` mmcontrast's DEBUG and the
    libraries' INFO; the HTTP clients stay at WARNING either way."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.setLogRecordFactory(redacting_factory(logging.getLogRecordFactory()))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("mmcontrast").setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in HTTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not interactive():
        quiet_library_bars()


def quiet_library_bars() -> None:
    """No progress bars from huggingface_hub, transformers (loading weights) and datasets:
    without a terminal their carriage-return updates make unreadable log lines. Set before
    those libraries are imported (they read it then), and switched off in any already
    imported."""
    for variable in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(variable, "1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def interactive() -> bool:
    """Whether a person watches the output live: a terminal on stderr, or a notebook."""
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())
