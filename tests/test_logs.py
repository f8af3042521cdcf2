"""Command-line logging: ``-v`` shows mmcontrast's debug lines but not the HTTP clients'
request logs, and anything shaped like a Hub token is masked."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from mmcontrast.logs import HTTP_LOGGERS, configure_logging, redact

TOKEN = "hf_" + "aBcD1234" * 5


@pytest.fixture(autouse=True)
def restore_logging() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    factory = logging.getLogRecordFactory()
    levels = {name: logging.getLogger(name).level for name in ("mmcontrast", *HTTP_LOGGERS)}
    yield
    root.handlers[:] = handlers
    logging.setLogRecordFactory(factory)
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def test_verbose_keeps_http_clients_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(verbose=True)
    logging.getLogger("mmcontrast").debug("loading towers")
    for name in HTTP_LOGGERS:
        logging.getLogger(name).debug("send_request_headers Authorization: Bearer secret")
    logging.getLogger("httpcore.http11").debug("headers [(b'authorization', b'Bearer x')]")
    err = capsys.readouterr().err
    assert "DEBUG mmcontrast: loading towers" in err
    assert "send_request_headers" not in err and "authorization" not in err.lower()


def test_tokens_are_masked_in_every_record(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(verbose=False)
    logging.getLogger("mmcontrast.hub").warning("push with %s failed", TOKEN)
    logging.getLogger("other").error("{'Authorization': 'Bearer %s'}", TOKEN)
    err = capsys.readouterr().err
    assert TOKEN not in err and "hf_***" in err and "Bearer ***" in err


def test_tokens_are_masked_for_a_librarys_own_handler() -> None:
    """transformers and huggingface_hub log through handlers of their own, not the root's."""
    configure_logging(verbose=True)
    configure_logging(verbose=True)  # twice: one masking layer, not two
    stream = io.StringIO()
    library = logging.getLogger("some_library.hub")
    library.addHandler(logging.StreamHandler(stream))
    library.propagate = False
    try:
        library.warning("token %s", TOKEN)
    finally:
        library.handlers.clear()
    assert stream.getvalue() == "token hf_***\n"


def test_redact_leaves_ordinary_text() -> None:
    text = "hf_hub downloaded openai/clip-vit-base-patch32 (hf_transfer off)"
    assert redact(text) == text
    assert redact(f"token={TOKEN}.") == "token=hf_***."


def test_no_library_progress_bars_without_a_terminal() -> None:
    """In a fresh process whose stderr is a pipe: the Hub's, transformers' and datasets' bars
    are off, whether the library was imported before or after."""
    code = (
        "import huggingface_hub.utils as hub\n"
        "from mmcontrast.logs import configure_logging\n"
        "assert not hub.are_progress_bars_disabled()\n"
        "configure_logging(False)\n"
        "import datasets\n"
        "from transformers.utils import logging as tl\n"
        "print(hub.are_progress_bars_disabled(), tl.is_progress_bar_enabled(),"
        " datasets.is_progress_bar_enabled())\n"
    )
    env = {k: v for k, v in os.environ.items() if "PROGRESS_BARS" not in k}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False", "False"]
