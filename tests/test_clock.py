"""The ingest clock and JSON timestamp parsing."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock.kernel import boottime_ns
from agent.parse.clock import REBASE_NS, IngestClock, TimestampRejected, parse_timestamp

NOW_NS = 1_790_000_000_000_000_000

# --- IngestClock ------------------------------------------------------------------------------


def test_clock_follows_the_wall_clock() -> None:
    before = time.time_ns()
    stamp = IngestClock().next()
    assert before <= stamp <= time.time_ns()


def test_clock_is_strictly_increasing_when_time_stands_still(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_000)
    clock = IngestClock()
    assert [clock.next() for _ in range(3)] == [1_000, 1_001, 1_002]


def test_clock_never_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    now = iter([5_000, 4_000, 6_000])
    monkeypatch.setattr(time, "time_ns", lambda: next(now))
    clock = IngestClock()
    assert [clock.next() for _ in range(3)] == [5_000, 5_001, 6_000]


def test_clock_stays_above_a_floor_it_is_just_behind() -> None:
    floor = time.time_ns() + REBASE_NS // 2  # a restart within a tick of a small step back
    clock = IngestClock(floor)
    assert [clock.next(), clock.next()] == [floor + 1, floor + 2]


def test_clock_follows_a_trusted_step_back_instead_of_counting_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wall clock is trusted only once confirmed (agent/clock/trust.py): standing far behind
    the floor then means the floor was stamped by a wrong clock, so counting on from it would
    stamp every reading at the wrong time."""
    now = iter([5 * REBASE_NS, 5 * REBASE_NS - 10, 2 * REBASE_NS, 2 * REBASE_NS])
    monkeypatch.setattr(time, "time_ns", lambda: next(now))
    clock = IngestClock()
    stamps = [clock.next() for _ in range(4)]
    assert stamps == [5 * REBASE_NS, 5 * REBASE_NS + 1, 2 * REBASE_NS, 2 * REBASE_NS + 1]


def test_last_is_the_newest_stamp_for_persisting_as_the_next_floor() -> None:
    clock = IngestClock(time.time_ns())
    stamp = clock.next()
    assert clock.last == stamp
    assert IngestClock(clock.last).next() > stamp


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=REBASE_NS // 2))
def test_clock_exceeds_any_floor_within_a_tick(ahead: int) -> None:
    floor = time.time_ns() + ahead
    clock = IngestClock(floor)
    first = clock.next()
    assert floor < first < clock.next()


def test_holding_stamps_come_from_the_boot_clock_and_are_remembered() -> None:
    clock = IngestClock(time.time_ns())
    clock.holding = True
    before = boottime_ns()
    stamps = [clock.next() for _ in range(3)]
    assert before <= stamps[0] < stamps[1] < stamps[2] <= boottime_ns() + 2
    clock.accept(1_700_000_000_000_000_000)
    assert clock.boot_stamped == [True, True, True, False]


@pytest.mark.parametrize(
    ("ts", "reason"),
    [
        (NOW_NS + 301 * 10**9, "future_timestamp"),
        (NOW_NS - 11 * 10**9, "ancient_timestamp"),
        (NOW_NS + 299 * 10**9, None),
        (NOW_NS - 9 * 10**9, None),
    ],
)
def test_payload_timestamps_are_checked_against_the_trusted_clock(
    monkeypatch: pytest.MonkeyPatch, ts: int, reason: str | None
) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: NOW_NS)
    clock = IngestClock(0, max_future=300 * 10**9, max_past=10 * 10**9)
    if reason is None:
        assert clock.accept(ts) == ts
    else:
        with pytest.raises(TimestampRejected) as caught:
            clock.accept(ts)
        assert caught.value.reason == reason
    clock.holding = True  # an unconfirmed clock cannot judge: checked when placed
    assert clock.accept(ts) == ts


# --- parse_timestamp --------------------------------------------------------------------------

SECOND = 1_000_000_000


@pytest.mark.parametrize(
    ("value", "precision", "expected"),
    [
        (1_700_000_000, "s", 1_700_000_000 * SECOND),
        (1_700_000_000, "ms", 1_700_000_000 * 1_000_000),
        (1_700_000_000, "us", 1_700_000_000 * 1_000),
        (1_700_000_000, "ns", 1_700_000_000),
        (1.5, "s", 1_500_000_000),
        (-2, "s", -2 * SECOND),
    ],
)
def test_epoch_with_precision(value: float, precision: str, expected: int) -> None:
    assert parse_timestamp(value, precision) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1_700_000_000, 1_700_000_000 * SECOND),  # seconds
        (9_000_000_000, 9_000_000_000 * SECOND),  # seconds up to the int64 limit (year 2255)
        (100_000_000_000, 100_000_000_000 * 1_000_000),  # 1e11: milliseconds
        (1_700_000_000_123, 1_700_000_000_123_000_000),
        (1_700_000_000_123_456, 1_700_000_000_123_456_000),  # microseconds
        (1_700_000_000_123_456_789, 1_700_000_000_123_456_789),  # nanoseconds
        (-1_700_000_000, -1_700_000_000 * SECOND),
        (1_700_000_000.123, 1_700_000_000_123_000_000),  # exact, not float-rounded
        (1_700_000_000_123.5, 1_700_000_000_123_500_000),
    ],
)
def test_epoch_precision_by_magnitude(value: float, expected: int) -> None:
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2023-11-14T22:13:20Z", 1_700_000_000 * SECOND),
        ("2023-11-14T22:13:20.5Z", 1_700_000_000 * SECOND + 500_000_000),
        ("2023-11-14T22:13:20.123456789Z", 1_700_000_000 * SECOND + 123_456_789),
        ("2023-11-14t22:13:20.000001z", 1_700_000_000 * SECOND + 1_000),
        ("2023-11-14 22:13:20Z", 1_700_000_000 * SECOND),
        ("2023-11-15T00:13:20+02:00", 1_700_000_000 * SECOND),
        ("2023-11-14T18:43:20.25-03:30", 1_700_000_000 * SECOND + 250_000_000),
        ("1969-12-31T23:59:59.5Z", -500_000_000),
    ],
)
def test_rfc3339(text: str, expected: int) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    ("value", "precision"),
    [
        (True, None),
        (None, None),
        ([1], None),
        ({"t": 1}, None),
        (math.nan, None),
        (math.inf, None),
        (1, "minutes"),
        (10**30, "s"),  # past the int64 nanosecond range
        (1e30, None),
        ("1700000000", None),  # epoch numbers must be JSON numbers
        ("2023-11-14T22:13:20", None),  # no offset
        ("2023-11-14T22:13:20.1234567891Z", None),  # finer than ns
        ("2023-13-14T22:13:20Z", None),
        ("2023-02-30T00:00:00Z", None),
        ("2023-11-14T24:00:00Z", None),
        ("2023-11-14T22:13:20+24:00", None),
        ("2023-11-14T22:13:20+01:60", None),
        ("2023-11-14T22:13:20.Z", None),
        ("0000-01-01T00:00:00Z", None),
        ("9999-12-31T23:59:59Z", None),  # past the int64 nanosecond range
        ("\uff12\uff10\uff12\uff13-11-14T22:13:20Z", None),  # fullwidth digits
        ("", None),
    ],
)
def test_bad_timestamps(value: object, precision: str | None) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(value, precision)


@settings(max_examples=200)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_ns_integers_are_kept(value: int) -> None:
    assert parse_timestamp(value, "ns") == value
