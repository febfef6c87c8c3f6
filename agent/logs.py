"""Logging: JSON lines under systemd (or when asked), readable console output on a terminal."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog

from agent.redact import RedactingFormatter, Redactor


def setup(fmt: str, level: str, redactor: Redactor) -> None:
    """``redactor`` masks the configured secrets in every event and in library log records."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(redactor, logging.BASIC_FORMAT))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


class RateLimited:
    """At most one log line per ``key`` and ``interval``, carrying how many were suppressed, so a
    flood of bad payloads is visible without drowning the journal."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay quiet; otherwise the number of lines suppressed since the last one."""
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
