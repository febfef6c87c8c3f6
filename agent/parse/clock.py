"""Ingest timestamps: the receive clock, the sanity bounds of payload timestamps, and JSON
timestamp parsing."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from agent.clock.kernel import boottime_ns

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_NS_PER = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
# A trusted clock that stands this far behind the newest stamp handed out was stepped back (by
# NTP, which is right): stamps follow it instead of counting on from the old, wrong time.
REBASE_NS = 1_000_000_000


class TimestampRejected(ValueError):
    """A payload timestamp outside the sanity bounds; ``reason`` labels the dead letter."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_bounds(ts: int, now: int, max_future: int, max_past: int) -> None:
    """Refuse a timestamp too far ahead of ``now`` (one reading stamped 2100 would hold its
    series' aggregation clock there for good) or absurdly far behind it; 0 disables a bound."""
    if max_future and ts > now + max_future:
        ahead = (ts - now) / 1e9
        raise TimestampRejected(
            "future_timestamp", f"timestamp {ts} is {ahead:,.0f} s ahead of the gateway's clock"
        )
    if max_past and ts < now - max_past:
        behind = (now - ts) / 1e9
        raise TimestampRejected(
            "ancient_timestamp", f"timestamp {ts} is {behind:,.0f} s behind the gateway's clock"
        )


class IngestClock:
    """Receive timestamps for readings that carry none, and the bounds check for those that do.

    Trusted (the wall clock is confirmed, see agent/clock/trust.py): strictly increasing ns wall
    time, so two readings never collapse into one point; ``floor_ns`` is the newest stamp already
    in the spool, so a restart never goes below it unless the clock was provably stepped back.

    Holding (the wall clock is not confirmed yet): stamps come from the boot clock, which never
    steps; once the wall clock is trusted they are placed on it (agent/clock/hold.py). Payload
    timestamps are then checked at placing time, against a clock that means something. Each
    timestamp handed out (True) or accepted (False) is noted in ``boot_stamped``: a message's
    lines take one each, in order, so the source tells them apart by position, never by value
    (a payload may carry the very number the boot clock gave another line).
    """

    __slots__ = ("_held_last", "_last", "boot_stamped", "holding", "max_future", "max_past")

    def __init__(self, floor_ns: int = 0, max_future: int = 0, max_past: int = 0) -> None:
        self._last = floor_ns
        self._held_last = 0
        self.max_future = max_future
        self.max_past = max_past
        self.holding = False
        self.boot_stamped: list[bool] = []

    @property
    def last(self) -> int:
        """The newest wall-clock stamp handed out; persisted so a restart never goes below it."""
        return self._last

    def next(self) -> int:
        if self.holding:
            stamp = max(boottime_ns(), self._held_last + 1)
            self._held_last = stamp
            self.boot_stamped.append(True)
            return stamp
        now = time.time_ns()
        last = self._last + 1
        self._last = now if now > last or last - now > REBASE_NS else last
        return self._last

    def accept(self, ts: int) -> int:
        """A payload timestamp, if it lies within the bounds (raises TimestampRejected)."""
        if self.holding:
            self.boot_stamped.append(False)
        else:
            check_bounds(ts, time.time_ns(), self.max_future, self.max_past)
        return ts


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
