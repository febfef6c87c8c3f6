"""Logging: JSON lines under systemd (or when asked), readable console output on a terminal.

In JSON every line is one JSON object, libraries' log records included, so a log shipper reads
the journal (``journalctl -o cat``) line by line. When stderr is the journal, each line starts
with its syslog priority (``<4>`` ...), which journald strips and keeps as the entry's PRIORITY:
``journalctl -p warning`` then finds the agent's warnings and errors.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any

import structlog

from agent.redact import RedactingFormatter, Redactor

# structlog method names (and lower-cased stdlib level names) -> syslog priorities
PRIORITY = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}


def to_journal(stream: IO[str]) -> bool:
    """True when ``stream`` is connected to the journal: systemd sets ``$JOURNAL_STREAM`` to
    the device and inode of the stream it hands the service (and a redirection changes them)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class _WithPriority:
    """Wraps a renderer: the line starts with ``<N>``, its syslog priority, for journald."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method: str, event: Any) -> str:
        return f"<{PRIORITY.get(method, 6)}>{self.renderer(logger, method, event)}"


def setup(fmt: str, level: str, redactor: Redactor) -> None:
    """``redactor`` masks the configured secrets in every event and in library log records."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    if to_journal(sys.stderr):
        renderer = _WithPriority(renderer)
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[
                    structlog.stdlib.add_log_level,
                    structlog.stdlib.add_logger_name,
                    stamp,
                ],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    redactor,
                    renderer,
                ],
            )
        )
    else:
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
