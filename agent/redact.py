"""Keeping secrets out of what the agent shows: logs, /readyz, error messages.

The config masks its own secret fields; this is the second line of defence. Whatever text the
agent emits passes a Redactor that knows every configured secret value, so a secret quoted by
a library's exception or echoed back by a server is masked too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from typing import Any

MASK = "********"
_PLAIN = (int, float, bool, type(None))


def mask_url(url: str) -> str:
    """The URL with everything between its scheme and its last '@' masked. The last '@', not
    the first: an unencoded password may itself hold '@', '/' or '#'."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, _ = head.partition("://")
    return f"{scheme}{sep}{MASK}@{tail}" if sep else f"{MASK}@{tail}"


class Redactor:
    """Replaces every known secret value with MASK, longest first, so a secret that contains
    another is masked whole."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def value(self, value: Any) -> Any:
        """Strings anywhere in dicts, lists and tuples; any other object that would print a
        secret becomes its masked repr (what a JSON log renderer would have printed)."""
        if not self._secrets or isinstance(value, _PLAIN):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        shown = repr(value)
        masked = self.text(shown)
        return value if masked == shown else masked

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """A structlog processor: runs after exceptions are formatted, before rendering."""
        for key, item in event.items():
            event[key] = self.value(item)
        return event


class RedactingFormatter(logging.Formatter):
    """For the stdlib loggers of libraries (asyncio, aiohttp, paho): the whole formatted
    record, traceback included, is masked."""

    def __init__(self, redactor: Redactor, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.text(super().format(record))
