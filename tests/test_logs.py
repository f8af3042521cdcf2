"""Command-line logging: ``-v`` shows mmcontrast's debug lines but not the HTTP clients'
request logs, and anything shaped like a Hub token is masked."""

from __future__ import annotations

import logging

import pytest

from mmcontrast.logs import HTTP_LOGGERS, configure_logging, redact

TOKEN = "hf_" + "aBcD1234" * 5


@pytest.fixture(autouse=True)
def restore_logging() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("mmcontrast", *HTTP_LOGGERS)}
    yield
    root.handlers[:] = handlers
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


def test_redact_leaves_ordinary_text() -> None:
    text = "hf_hub downloaded openai/clip-vit-base-patch32 (hf_transfer off)"
    assert redact(text) == text
    assert redact(f"token={TOKEN}.") == "token=hf_***."
