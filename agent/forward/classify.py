"""What to do with a write's answer (DESIGN §2). Pure, so the whole table is unit-tested."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    SUCCESS = "success"
    RETRY = "retry"  # transient: exponential backoff with full jitter, forever
    THROTTLE = "throttle"  # the server asked us to slow down: honour Retry-After
    SPLIT = "split"  # body too large: halve; a single line too large is a dead letter
    BISECT = "bisect"  # some line is bad: halve until the bad lines are alone
    CONFIG = "config"  # credentials, bucket, URL or TLS trust wrong: keep everything, retry slowly


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    label: str  # metric label: the status code, "timeout", "connection_error" or "tls_error"
    status: int | None = None
    retry_after: float | None = None
    message: str = ""


_BY_STATUS = {
    429: Action.THROTTLE,
    503: Action.THROTTLE,
    408: Action.RETRY,
    500: Action.RETRY,
    502: Action.RETRY,
    504: Action.RETRY,
    413: Action.SPLIT,
    400: Action.BISECT,
    422: Action.BISECT,
    401: Action.CONFIG,
    403: Action.CONFIG,
    404: Action.CONFIG,
}


def parse_retry_after(value: str | None, now: float, cap: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), within [0, cap]."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(cap, seconds))


def classify(
    status: int, headers: Mapping[str, str], now: float, cap: float, message: str = ""
) -> Outcome:
    if 200 <= status < 300:
        action = Action.SUCCESS
    elif status in _BY_STATUS:
        action = _BY_STATUS[status]
    elif status >= 500:
        action = Action.RETRY
    else:
        # Any other answer (a redirect, 405, 411, ...) means the URL or the server is not what
        # the config says: a person must look, and no reading may be dropped meanwhile.
        action = Action.CONFIG
    retry_after = None
    if action in (Action.THROTTLE, Action.RETRY):
        retry_after = parse_retry_after(headers.get("Retry-After"), now, cap)
    return Outcome(action, str(status), status, retry_after, message)


def failure(label: str, message: str) -> Outcome:
    """A request that got no HTTP answer (timeout, refused, reset): always retried."""
    return Outcome(Action.RETRY, label, None, None, message)


def tls_failure(message: str) -> Outcome:
    """The TLS handshake failed: a certificate the agent does not trust, or https to a port that
    does not serve it. Retrying soon cannot help: a person must fix the trust or the URL."""
    return Outcome(Action.CONFIG, "tls_error", None, None, message)
