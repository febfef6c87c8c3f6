"""Masking: URLs in messages, configured secrets in log events, library log records and /readyz."""

from __future__ import annotations

import io
import json
import logging
import wsgiref.util
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent.redact import MASK, RedactingFormatter, Redactor, mask_url
from agent.status.metrics import Metrics
from agent.status.server import build_app

SECRET = "Kx7-pl4nted"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://influx:8086/x", "https://influx:8086/x"),
        ("mqtt://edge:pw@broker:1883", f"mqtt://{MASK}@broker:1883"),
        ("https://u:p@ss/w#rd@host/path", f"https://{MASK}@host/path"),
        ("mqtt:/u:pw@broker", f"{MASK}@broker"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_every_string_of_an_event_is_masked() -> None:
    redactor = Redactor([SECRET, "", f"{SECRET}-longer"])

    class Quoting:
        def __repr__(self) -> str:
            return f"Quoting({SECRET})"

    event: dict[str, Any] = {
        "event": f"login with {SECRET} failed",
        "nested": {"list": [f"a{SECRET}b", 3, None], "tuple": (f"{SECRET}-longer",)},
        "object": Quoting(),
        "path": Path("/var/lib/edge-agent"),
        "count": 7,
    }
    rendered = structlog.processors.JSONRenderer()(None, "error", redactor(None, "error", event))
    assert SECRET not in rendered
    data = json.loads(rendered)
    assert data["event"] == f"login with {MASK} failed"
    assert data["nested"] == {"list": [f"a{MASK}b", 3, None], "tuple": [MASK]}
    assert data["object"] == f"Quoting({MASK})"
    assert data["path"] == "PosixPath('/var/lib/edge-agent')" and data["count"] == 7


def test_library_log_records_are_masked_traceback_included() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(Redactor([SECRET]), logging.BASIC_FORMAT))
    logger = logging.getLogger("test_redact.library")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError(f"bad token {SECRET}")
        except ValueError:
            logger.exception("request to %s failed", f"https://{SECRET}@host")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "ValueError: bad token ********" in text and SECRET not in text


def test_readyz_body_is_masked() -> None:
    app = build_app(
        Metrics(), lambda: {"output:cloud": f"server said {SECRET}"}, Redactor([SECRET])
    )
    environ: dict[str, Any] = {"PATH_INFO": "/readyz"}
    wsgiref.util.setup_testing_defaults(environ)
    answer: list[str] = []
    body = b"".join(app(environ, lambda status, headers: answer.append(status)))
    assert answer == ["503 Service Unavailable"]
    assert json.loads(body)["problems"] == {"output:cloud": f"server said {MASK}"}
