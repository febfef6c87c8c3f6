"""Ingest timestamps: a strictly increasing receive clock and JSON timestamp parsing."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_NS_PER = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


class IngestClock:
    """Strictly increasing ns receive timestamps, so two readings never collapse into one point.

    ``floor_ns`` is a timestamp already handed out (e.g. the newest one in the spool): every
    ``next()`` is greater, even if the wall clock stepped back across a restart.
    """

    __slots__ = ("_last",)

    def __init__(self, floor_ns: int = 0) -> None:
        self._last = floor_ns

    @property
    def last(self) -> int:
        """The newest timestamp handed out; persisted so a restart never goes below it."""
        return self._last

    def next(self) -> int:
        """The current time in ns, or one ns past the previous value if that is not later."""
        now = time.time_ns()
        last = self._last + 1
        self._last = now if now > last else last
        return self._last


def _in_range(ns: int) -> int:
    if not _INT64_MIN <= ns <= _INT64_MAX:
        raise ValueError(f"timestamp {ns} ns is outside the int64 range")
    return ns


def _unit(value: float, precision: str | None) -> int:
    """ns per unit: the given precision, else guessed from the magnitude of an epoch value."""
    if precision is not None:
        try:
            return _NS_PER[precision]
        except KeyError:
            raise ValueError(f"unknown timestamp precision {precision!r}") from None
    magnitude = abs(value)
    if magnitude < 1e11:
        return _NS_PER["s"]
    if magnitude < 1e14:
        return _NS_PER["ms"]
    if magnitude < 1e17:
        return _NS_PER["us"]
    return 1


def _parse_rfc3339(text: str) -> int:
    found = _RFC3339.fullmatch(text)
    if found is None:
        raise ValueError(f"timestamp {text!r} is not RFC 3339")
    year, month, day, hour, minute, second = (int(found.group(i)) for i in range(1, 7))
    fraction, zulu, sign, off_hours, off_minutes = found.group(7, 8, 9, 10, 11)
    offset = timedelta()
    if zulu is None:
        if int(off_hours) > 23 or int(off_minutes) > 59:
            raise ValueError(f"timestamp {text!r} has an invalid UTC offset")
        offset = timedelta(hours=int(off_hours), minutes=int(off_minutes))
        if sign == "-":
            offset = -offset
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError as exc:
        raise ValueError(f"timestamp {text!r}: {exc}") from None
    seconds = (moment - _EPOCH) // _SECOND
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return seconds * 1_000_000_000 + nanos


def parse_timestamp(value: object, precision: str | None = None) -> int:
    """Convert a JSON timestamp (epoch number or RFC 3339 string) to ns since the epoch."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, int):
        return _in_range(value * _unit(value, precision))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"timestamp {value} is not finite")
        # Via the shortest decimal text, so 1700000000.123 s is exactly ...123000000 ns.
        return _in_range(int(Decimal(repr(value)) * _unit(value, precision)))
    if isinstance(value, str):
        return _in_range(_parse_rfc3339(value))
    raise ValueError(f"unsupported timestamp type {type(value).__name__}")
