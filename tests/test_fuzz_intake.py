"""Fuzzing intake (issue 7): arbitrary topics and payloads through map -> line protocol -> dead
letters or spool, for every format, several templates, static tags, both override_tags and both
clock modes.

Nothing may escape the dead-letter path: ``Mapper.add`` never raises, every message is either
stored or set aside with a known reason, every dead letter survives the real file writer, and
every stored line parses back strictly, keeps the gateway's tags and lies within the clock's
bounds, byte for byte through a real spool. ``EDGE_FUZZ_SCALE=20`` multiplies the examples for a
long run.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.aggregate.readings import read_line
from agent.clock import hold
from agent.deadletter import DeadLetters, held_record
from agent.parse.clock import IngestClock
from agent.parse.lineprotocol import (
    FieldValue,
    ParsedLine,
    escape_key,
    escape_measurement,
    parse_line,
    parse_lines,
)
from agent.parse.message import SAMPLE_BYTES
from agent.parse.payload import MappingRules
from agent.parse.topic import TopicTemplate
from agent.source.mapping import Mapper, Prepared, Route
from agent.spool.budget import Budget
from agent.spool.store import Body, Position, Spool

NOW = 1_700_000_000_000_000_000
SECOND = 1_000_000_000
BOOT = 5 * SECOND  # the boot clock, standing: held stamps count on from it, as after a boot
FUTURE = 300 * SECOND
PAST = 3650 * 86400 * SECOND
INT64 = (-(2**63), 2**63 - 1)
HELD = hold.stream_of(1)
SCALE = int(os.environ.get("EDGE_FUZZ_SCALE", "1"))
FUZZ = settings(
    max_examples=120 * SCALE,
    deadline=None,  # dead letters are fsynced and every example opens a spool
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Why a message may be set aside. "internal_error" is missing on purpose: it is a bug of ours.
REASONS = frozenset(
    {
        "no_subscription",
        "bad_topic",
        "too_large",
        "empty",
        "not_utf8",
        "bad_json",
        "bad_line_protocol",
        "no_fields",
        "bad_timestamp",
        "future_timestamp",
        "ancient_timestamp",
        "unrepresentable",
    }
)

# --- strategies -------------------------------------------------------------------------------

T = TypeVar("T")
Format = Literal["value", "influx", "json"]
SURROGATES = ["\ud800", "\udbff", "\udc80", "\udcff"]
AWKWARD = ["/", "+", "#", "$", "\x00", "\n", "\r", "\t", " ", ",", "=", "\\", '"', "{", "}",
           "_", "\u00e9", "\u2028", "\x85", "\x0b", "\U0001f600"]  # fmt: skip
NAMES = ["m", "temp", "l1", "s01", "a b", "x,y=z", 'q"t', "back\\", "\\", "\\\\ ", "#h", "\u00e9",
         "\U0001f600", "\x85\u2028"]  # fmt: skip
NS_PER = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": SECOND}
DAY = 86400 * SECOND


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """one_of with weights, so that well-formed input gets most examples and noise the rest."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


# Lone surrogates: text that UTF-8 cannot carry, as the ack shim or a JSON escape makes it.
plain_chars = st.one_of(st.sampled_from(AWKWARD), st.characters(exclude_categories=["Cs"]))
any_chars = st.one_of(st.sampled_from(AWKWARD + SURROGATES), st.characters())


def plain_text(max_size: int = 10, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(plain_chars, min_size=min_size, max_size=max_size)


def any_text(max_size: int = 10, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(any_chars, min_size=min_size, max_size=max_size)


def shim_decoded(max_size: int) -> st.SearchStrategy[str]:
    """Topic bytes as the ack shim decodes them: non-UTF-8 bytes become lone surrogates."""
    return st.binary(max_size=max_size).map(lambda raw: raw.decode("utf-8", "surrogateescape"))


def utf8(text: str) -> bytes:
    """Text as a publisher would send it; a lone surrogate becomes bytes that are not UTF-8."""
    return text.encode("utf-8", "surrogatepass")


def tokens(*items: bytes) -> st.SearchStrategy[bytes]:
    """Bytes drawn towards a format's syntax reach deeper code than uniform noise does."""
    return st.lists(st.sampled_from(items), min_size=1, max_size=24).map(b"".join)


names = weighted((3, st.sampled_from(NAMES)), (2, plain_text(8, min_size=1)))

# --- topics and rules

TEMPLATES = [
    "plant/{line}/sensor/{sensor}/{measurement}",
    "dev/{device}/{measurement}/{field}",
    "{plant}/+/{measurement}/#",
    "t/{field}",
    "raw/#",
    "#",
]
segments = weighted(
    (3, st.sampled_from(NAMES)),
    (2, any_text(8).map(lambda text: text.replace("/", ""))),
    (1, shim_decoded(8).map(lambda text: text.replace("/", ""))),
    (1, st.sampled_from(["", "+", "#", "$SYS"])),
)


@st.composite
def topic_for(draw: st.DrawFn, template: str) -> str:
    """A topic that fits ``template`` in shape, with arbitrary text in the segments it captures."""
    parts: list[str] = []
    for segment in template.split("/"):
        if segment == "#":
            parts.extend(draw(st.lists(segments, max_size=3)))
        elif segment == "+" or segment.startswith("{"):
            parts.append(draw(segments))
        else:
            parts.append(segment)
    return "/".join(parts)


def topics(template: str) -> st.SearchStrategy[str]:
    return weighted((6, topic_for(template)), (1, any_text(40)), (1, shim_decoded(40)))


# Static tags come from the config: never empty, no control characters, no lone surrogates.
static_text = st.text(
    st.one_of(st.sampled_from([" ", ",", "=", "\\", '"', "#", "\x85", "\U0001f600"]),
              st.characters(exclude_categories=["Cc", "Cs"])),
    min_size=1,
    max_size=8,
)  # fmt: skip
static_tags = st.dictionaries(
    st.one_of(st.sampled_from(["plant", "line", "sensor", "site", "t"]), static_text),
    static_text,
    max_size=3,
)
JSON_TAG_KEYS = ["t", "sensor", "plant", "a_b", "time", "id"]


@st.composite
def mapping_rules(draw: st.DrawFn, fmt: Format, template: str) -> MappingRules:
    return MappingRules(
        TopicTemplate(template),
        fmt,
        measurement=draw(st.sampled_from(["mqtt", "m e,a=s\\", "temp"])),
        field=draw(st.sampled_from(["value", "v a,l=u\\"])),
        tags=draw(static_tags),
        precision=draw(st.sampled_from(sorted(NS_PER))),
        json_time_key=draw(st.sampled_from(["time", "ts"])),
        json_tag_keys=frozenset(draw(st.lists(st.sampled_from(JSON_TAG_KEYS), max_size=3))),
        override_tags=draw(st.booleans()),
    )


def near_now(unit: int, days: int = 10) -> st.SearchStrategy[int]:
    """Timestamps in ``unit`` ns around NOW: most within the bounds, some just outside."""
    return st.integers(-days * DAY, days * DAY).map(lambda delta: (NOW + delta) // unit)


# --- value: bare numbers, booleans, text

number_text = st.one_of(
    st.floats().map(repr),
    st.floats().map(str),
    st.integers().map(str),
    st.sampled_from(["1e999", "-1e999", "9" * 400, "nan", "-Infinity", "inf", "1_0", "0x10",
                     "\u0661\u0662", "+.5", "1.", ".", "-", "true", "FALSE", "True", "t", "on"]),
)  # fmt: skip
whitespace = st.sampled_from(["", " ", "\t", "\r\n", "\n", "\x0b", "\x0c", "\u00a0"])
value_payloads = weighted(
    (4, st.tuples(whitespace, st.one_of(number_text, plain_text(20)), whitespace).map(
        lambda parts: utf8("".join(parts)))),
    (1, st.binary(max_size=40)),
    (1, tokens(b"1", b"2", b".", b"e", b"E", b"-", b"+", b"_", b" ", b"\t", b"\n", b"\r", b"nan",
               b"inf", b"true", b"false", b'"', b"\\", b"\xff", b"\xc3\xa9", b"\x00")),
)  # fmt: skip

# --- influx: line protocol, well formed or not quite

lp_values = weighted(
    (4, st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda i: f"{i}i"),
        st.integers(min_value=0, max_value=2**64 - 1).map(lambda i: f"{i}u"),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(["t", "T", "true", "True", "TRUE", "f", "false", "FALSE", "-0", "1.",
                         ".5", "1E5", '""']),
        plain_text(10).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    )),
    (1, st.one_of(
        st.integers(min_value=-(2**65), max_value=2**65).map(lambda i: f"{i}i"),
        st.integers(min_value=-5, max_value=2**65).map(lambda i: f"{i}u"),
        st.sampled_from(["1e999", "", "nan", "inf", "1e", '"\\"', "1i1", "0x1", "tru"]),
        plain_text(10).map(lambda s: f'"{s}"'),
    )),
)  # fmt: skip


@st.composite
def lp_line(draw: st.DrawFn, precision: str) -> str:
    measurement = draw(names)
    tags = draw(st.lists(st.tuples(names, names), max_size=3))
    fields = draw(st.lists(st.tuples(names, lp_values), min_size=1, max_size=3))
    stamp = draw(
        weighted(
            (3, st.none()),
            (3, near_now(NS_PER[precision]).map(str)),
            (1, st.integers(BOOT - 2, BOOT + 4).map(lambda ts: str(ts // NS_PER[precision]))),
            (1, st.integers(min_value=-(2**65), max_value=2**65).map(str)),
            (1, plain_text(4)),
        )
    )
    if draw(weighted((4, st.just(True)), (1, st.just(False)))):
        measurement = escape_measurement(measurement)
        tags = [(escape_key(k), escape_key(v)) for k, v in tags]
        fields = [(escape_key(k), v) for k, v in fields]
    head = ",".join([measurement, *(f"{k}={v}" for k, v in tags)])
    body = ",".join(f"{k}={v}" for k, v in fields)
    return " ".join(part for part in (head, body, stamp) if part is not None)


def influx_payloads(rules: MappingRules) -> st.SearchStrategy[bytes]:
    lines = weighted(
        (6, lp_line(rules.precision)), (1, st.sampled_from(["", "# comment", "  ", "\t"]))
    )
    documents = st.tuples(
        st.lists(lines, min_size=1, max_size=4), st.sampled_from(["\n", "\r\n"])
    ).map(lambda doc: utf8(doc[1].join(doc[0])))
    return weighted(
        (5, documents),
        (1, st.binary(max_size=60)),
        (1, tokens(b"m", b",", b"=", b" ", b"\\", b'"', b"\n", b"\r\n", b"#", b"1", b"-", b"i",
                   b"u", b"t", b".", b"e", b"9223372036854775808", b"\xff", b"\x00")),
    )  # fmt: skip


# --- json: documents built as Python values and serialised, and text json.dumps never makes


def rfc3339(moment: datetime, sep: str, digits: str, offset: str) -> str:
    return moment.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + (f".{digits}" if digits else "") + offset


offsets = weighted(
    (4, st.sampled_from(["Z", "z", "+00:00", "-00:00"])),
    (2, st.tuples(st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59)).map(
        lambda o: f"{o[0]}{o[1]:02}:{o[2]:02}")),
    (1, st.sampled_from(["", "+25:00", "+23:61", "+1:00", "UTC"])),
)  # fmt: skip
moments = weighted(
    (3, near_now(SECOND).map(lambda s: datetime.fromtimestamp(s, UTC).replace(tzinfo=None))),
    (1, st.datetimes()),
)
rfc3339_text = st.builds(
    rfc3339, moments, st.sampled_from(["T", "t", " ", "_"]), st.text("0123456789", max_size=11),
    offsets,
)  # fmt: skip
time_values = weighted(
    (4, st.sampled_from(sorted(NS_PER.values())).flatmap(near_now)),
    (1, near_now(SECOND).map(lambda t: t + 0.25)),
    (2, rfc3339_text),
    (2, st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), any_text(12),
                  st.lists(st.integers(), max_size=2),
                  st.dictionaries(st.sampled_from(["a", "time"]), st.integers(), max_size=2))),
)  # fmt: skip
json_numbers = weighted(
    (4, st.one_of(st.integers(-(10**12), 10**12), st.floats(allow_nan=False,
                                                              allow_infinity=False))),
    (1, st.one_of(
        st.integers(),
        st.floats(),  # NaN and Infinity come out as tokens JSON does not have
        st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**300, -(10**400), 1e308, 5e-324, -0.0]),
    )),
)  # fmt: skip
json_strings = weighted((4, plain_text(12)), (1, any_text(12)))
json_leaves = weighted((4, json_numbers), (2, json_strings), (1, st.booleans()), (1, st.none()))


def json_payloads(rules: MappingRules) -> st.SearchStrategy[bytes]:
    keys = weighted(
        (3, st.sampled_from(["v", "a", "a_b", "temp", *sorted(rules.json_tag_keys)])),
        (1, any_text(8)),
    )
    values = weighted(
        (5, json_leaves),
        (1, st.recursive(
            json_leaves,
            lambda inner: st.one_of(
                st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)
            ),
            max_leaves=10,
        )),
    )  # fmt: skip

    @st.composite
    def objects(draw: st.DrawFn) -> dict[str, Any]:
        obj: dict[str, Any] = draw(st.dictionaries(keys, values, min_size=1, max_size=5))
        if draw(st.booleans()):
            time_key = draw(weighted((4, st.just(rules.json_time_key)), (1, st.just("time"))))
            obj[time_key] = draw(time_values)
        return obj

    documents = weighted(
        (3, objects()), (2, st.lists(objects(), min_size=1, max_size=4)), (1, values)
    ).flatmap(lambda doc: st.builds(json.dumps, st.just(doc), ensure_ascii=st.booleans()))
    return weighted(
        (5, documents.map(utf8)),
        (1, crafted_json.map(str.encode)),
        (1, st.binary(max_size=60)),
        (1, tokens(b"{", b"}", b"[", b"]", b'"', b":", b",", b" ", b"1", b"-", b"e", b".",
                   b"null", b"true", b'"v"', b'"time"', b"NaN", b"\\u", b"d800", b"\xff")),
    )  # fmt: skip


def nested(depth: int, kind: str) -> str:
    """Nesting as deep as a publisher likes, far past what json.dumps or the stack allow."""
    if kind == "objects":
        return '{"v":1,"d":' + '{"a":' * depth + "1" + "}" * depth + "}"
    if kind == "lists":
        return "[" * depth + "]" * depth
    return '{"v":1,"d":' + '[{"a":' * depth + "1" + "}]" * depth + "}"


crafted_json = st.one_of(
    st.builds(nested, st.integers(1, 5000), st.sampled_from(["objects", "lists", "mixed"])),
    st.sampled_from(['{"v": NaN}', '{"v": Infinity}', '{"v": -Infinity}', '{"v": 1e999}',
                     '{"time": 1e999, "v": 1}', '{"v": 1' + "0" * 5000 + "}",
                     '{"v": 1, "s": "\\ud800"}', '{"\\udc80": 1}', '{"v": 1}{"v": 2}',
                     '[{"v": 1}, 2]', "[]", "{}", '"text"', "1"]),
)  # fmt: skip


def payloads(rules: MappingRules) -> st.SearchStrategy[bytes]:
    if rules.format == "value":
        return value_payloads
    if rules.format == "influx":
        return influx_payloads(rules)
    return json_payloads(rules)


FORMATS: list[Format] = ["influx", "json", "value"]


@dataclass(frozen=True)
class Case:
    routes: list[Route]
    messages: list[tuple[str, bytes]]
    holding: bool
    bounded: bool
    max_payload: int


@st.composite
def cases(draw: st.DrawFn, fmt: Format) -> Case:
    """A gateway (one to three subscriptions, the first of format ``fmt``) and a few messages,
    each mostly shaped for the subscription it is meant for."""
    first = [(fmt, draw(st.sampled_from(TEMPLATES)))]
    others = draw(
        st.lists(st.tuples(st.sampled_from(FORMATS), st.sampled_from(TEMPLATES)), max_size=2)
    )
    routes = [
        Route(draw(mapping_rules(kind, template)), 1, f"{index}:{template}")
        for index, (kind, template) in enumerate(first + others)
    ]
    messages = []
    for _ in range(draw(st.integers(1, 3))):
        rules = draw(st.sampled_from(routes)).rules
        shaped_for = draw(weighted((6, st.just(rules.format)), (1, st.sampled_from(FORMATS))))
        payload = draw(payloads(dataclasses.replace(rules, format=shaped_for)))
        messages.append((draw(topics(rules.template.template)), payload))
    return Case(
        routes,
        messages,
        holding=draw(st.booleans()),
        bounded=draw(st.booleans()),
        max_payload=draw(st.sampled_from([1 << 20] * 5 + [40])),
    )


# --- the path, step by step -------------------------------------------------------------------


class CountingClock(IngestClock):
    """The real clock, counting the stamps it hands out: held lines marked as boot-stamped must
    be exactly those."""

    def __init__(self, floor_ns: int, max_future: int, max_past: int) -> None:
        super().__init__(floor_ns, max_future, max_past)
        self.handed_out = 0

    def next(self) -> int:
        self.handed_out += 1
        return super().next()


@dataclass
class Run:
    clock: CountingClock
    out: Prepared = field(default_factory=Prepared)
    stored: int = 0


@contextmanager
def standing_clocks() -> Iterator[None]:
    """The wall clock stands at NOW and the boot clock at BOOT, so bounds and stamps are exact
    and a failing example replays."""
    with (
        mock.patch.object(time, "time_ns", return_value=NOW),
        mock.patch("agent.parse.clock.boottime_ns", return_value=BOOT),
    ):
        yield


def map_case(case: Case) -> Run:
    """Every message through ``Mapper.add``: it must not raise, and each message is stored or
    set aside, never both, never neither."""
    bounds = (FUTURE, PAST) if case.bounded else (0, 0)
    clock = CountingClock(NOW - 1, *bounds)
    clock.holding = case.holding
    mapper = Mapper(case.routes, clock, case.max_payload)
    run = Run(clock)
    for topic, payload in case.messages:
        out = run.out
        before = (len(out.raw), out.raw_lines, len(out.held), len(out.bad), clock.handed_out)
        mapper.add(topic, payload, out)
        raw, raw_lines, held, bad, handed_out = before
        new_held = out.held[held:]
        outcome = (len(out.raw) - raw, len(new_held) > 0, len(out.bad) - bad)
        assert outcome in {(1, False, 0), (0, True, 0), (0, False, 1)}, (topic, payload, outcome)
        if out.bad[bad:]:
            check_dead_letter(out.bad[-1], topic, payload)
            event(f"set aside: {out.bad[-1]['reason']}")  # --hypothesis-show-statistics
            continue
        run.stored += 1
        event("held" if new_held else "stored")
        route = mapper._route(topic)
        assert route is not None
        lines = out.raw[-1].split(b"\n") if len(out.raw) > raw else []
        assert len(lines) == out.raw_lines - raw_lines
        check_stored(route.rules, topic, payload, clock, lines, new_held)
        boot_stamped = sum(marked[:2] == hold.BOOT_STAMPED for marked in new_held)
        assert boot_stamped == (clock.handed_out - handed_out if new_held else 0)
    out = run.out
    assert sum(out.rejected.values()) == len(out.bad)
    assert run.stored + len(out.bad) == len(case.messages)
    assert sum(out.received.values()) + out.rejected.get("no_subscription", 0) == len(case.messages)
    return run


def check_stored(
    rules: MappingRules,
    topic: str,
    payload: bytes,
    clock: IngestClock,
    lines: list[bytes],
    held: list[bytes],
) -> None:
    """One message's stored lines: raw ones within the bounds, held ones marked; an influx
    payload's points come out with the same measurement, fields (value and type), own tags and
    timestamps (in ns), and exactly those without a timestamp are marked as boot-stamped."""
    points = [check_line(line, rules, topic, clock, payload_stamps_checked=True) for line in lines]
    for marked in held:
        assert marked[:2] in (hold.BOOT_STAMPED, hold.OWN_STAMP)
        points.append(check_line(marked[2:], rules, topic, clock, payload_stamps_checked=False))
    if rules.format != "influx":
        return
    sent = parse_lines(payload.decode())
    assert len(sent) == len(points)
    for index, (sent_point, stored) in enumerate(zip(sent, points, strict=True)):
        assert stored.measurement == sent_point.measurement
        assert typed(stored.fields) == typed(sent_point.fields)
        for key, value in sent_point.tags.items():
            if key not in rules.tags or rules.override_tags:
                assert stored.tags[key] == value
        if sent_point.ts_ns is not None:
            assert stored.ts_ns == sent_point.ts_ns * NS_PER[rules.precision]
        if held:
            assert (held[index][:2] == hold.BOOT_STAMPED) == (sent_point.ts_ns is None)


def typed(fields: dict[str, FieldValue]) -> dict[str, tuple[type, FieldValue]]:
    return {key: (type(value), value) for key, value in fields.items()}


def check_dead_letter(record: dict[str, Any], topic: str, payload: bytes) -> None:
    """A known reason, an error text, and the topic and payload as received."""
    assert record["reason"] in REASONS, record
    assert isinstance(record["error"], str) and record["error"]
    sample = payload[:SAMPLE_BYTES] if record["reason"] == "too_large" else payload
    assert received(record, "payload") == sample
    try:
        sent = topic.encode("utf-8", "surrogateescape")  # what the ack shim decoded
    except UnicodeEncodeError:
        sent = topic.encode("utf-8", "surrogatepass")
    assert received(record, "topic") == sent


def received(record: dict[str, Any], key: str) -> bytes:
    """What a dead letter says was received, as bytes."""
    if key in record:
        text: str = record[key]
        return text.encode()
    return base64.b64decode(record[f"{key}_base64"])


def check_line(
    line: bytes, rules: MappingRules, topic: str, clock: IngestClock, payload_stamps_checked: bool
) -> ParsedLine:
    """A stored line parses strictly, keeps the gateway's tags and the topic's captures, and
    lies within the clock's bounds."""
    text = line.decode()  # strict: the spool holds UTF-8
    point = parse_line(text)
    assert point.ts_ns is not None
    assert INT64[0] <= point.ts_ns <= INT64[1]
    for key, value in rules.tags.items():
        assert key in point.tags, (key, text)
        assert rules.override_tags or point.tags[key] == value, (key, text)
    found = rules.template.match(topic)
    assert found is not None
    if rules.format != "influx":
        assert point.measurement == (found.measurement or rules.measurement)
        for key, value in found.tags.items():
            shadowed = key in rules.tags and not rules.override_tags
            if not shadowed and not (rules.format == "json" and key in rules.json_tag_keys):
                assert point.tags[key] == value, (key, text)
    if payload_stamps_checked and clock.max_future:
        assert NOW - clock.max_past <= point.ts_ns <= NOW + clock.max_future
    check_reading(text, point)
    return point


def check_reading(text: str, point: ParsedLine) -> None:
    """The aggregator's fast reader agrees with the strict parser."""
    numeric = [
        (key, float(value))
        for key, value in point.fields.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    if not numeric:
        return
    reading = read_line(text)
    assert reading.measurement == point.measurement
    assert sorted(reading.fields) == sorted(numeric)
    assert reading.ts == point.ts_ns


def place_held(run: Run, offset: int | None) -> hold.Placed:
    """Held lines on the wall clock, line by line: a boot-stamped line lands between the boot
    clock's readings around the mapping or, from an unconfirmed boot, is set aside; a line with
    its own stamp keeps it, within the bounds. Every placed line parses strictly."""
    clock = run.clock
    every = hold.Placed()
    for marked in run.out.held:
        placed = hold.place(marked, offset, NOW, clock.max_future, clock.max_past)
        assert len(placed.lines) + len(placed.rejected) == 1
        every.lines.extend(placed.lines)
        every.rejected.extend(placed.rejected)
        if marked[:2] == hold.BOOT_STAMPED and offset is None:
            assert [reason for _, reason, _ in placed.rejected] == ["clock_unplaceable"]
            continue
        if marked[:2] == hold.BOOT_STAMPED:
            assert offset is not None
            low, high = BOOT + offset, BOOT + offset + clock.handed_out
        elif clock.max_future:
            low, high = NOW - clock.max_past, NOW + clock.max_future
        else:
            low, high = INT64
        for _, reason, _ in placed.rejected:
            assert reason in {"future_timestamp", "ancient_timestamp"}
        for line in placed.lines:
            point = parse_line(line.decode())
            assert point.ts_ns is not None and low <= point.ts_ns <= high, line
            assert line.rpartition(b" ")[0] == marked[2:].rpartition(b" ")[0]
            check_reading(line.decode(), point)
    whole = hold.place(b"\n".join(run.out.held), offset, NOW, clock.max_future, clock.max_past)
    assert whole == every
    return whole


def write_dead_letters(path: Path, records: list[dict[str, Any]]) -> None:
    """The real writer (ASCII JSON, fsynced); every record reads back as the same JSON."""
    letters = DeadLetters(path)
    letters.write(records)
    if not records:
        return
    with letters.path.open(encoding="ascii") as fh:
        assert [json.loads(line) for line in fh] == json.loads(json.dumps(records))


async def through_spool(directory: Path, run: Run, offset: int | None) -> None:
    """Commit as the source does, read back byte for byte, then place the held chunk."""
    out = run.out
    spool = Spool(directory / "spool.db", Budget(1 << 30, 86400.0, 0, "drop_oldest"), "normal")
    await spool.open()
    try:
        bodies = {"raw": Body(b"\n".join(out.raw), out.raw_lines)}
        if out.held:
            bodies[HELD] = Body(b"\n".join(out.held), len(out.held))
        assert (await spool.commit(bodies)).committed
        raw = b"\n".join(out.raw).split(b"\n") if out.raw else []
        assert await read_all(spool, "raw") == raw
        if not out.held:
            return
        assert await read_all(spool, HELD) == out.held
        chunk = await spool.oldest_chunk(HELD)
        assert chunk is not None
        placed = place_held(run, offset)
        await spool.move_chunk(
            HELD, chunk[0], "raw", Body(b"\n".join(placed.lines), len(placed.lines))
        )
        assert await read_all(spool, "raw") == raw + placed.lines
        assert await read_all(spool, HELD) == []
        write_dead_letters(
            directory / "held.jsonl",
            [held_record(line.decode(), why, error) for line, why, error in placed.rejected],
        )
    finally:
        await spool.close()


async def read_all(spool: Spool, stream: str) -> list[bytes]:
    lines: list[bytes] = []
    pos = Position(0, 0)
    while (result := await spool.read(stream, pos, 7, 1 << 20)).lines:
        lines.extend(result.lines)
        pos = result.end
    return lines


# --- the properties ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_nothing_escapes_the_dead_letter_path(
    workdir: Path, fmt: Format, data: st.DataObject
) -> None:
    case = data.draw(cases(fmt), label="case")
    placed_now = data.draw(st.booleans(), label="held chunk of this boot")
    with standing_clocks(), tempfile.TemporaryDirectory(dir=workdir) as name:
        directory = Path(name)
        run = map_case(case)
        write_dead_letters(directory / "intake.jsonl", run.out.bad)
        offset = NOW - BOOT if placed_now else None
        asyncio.run(through_spool(directory, run, offset))


# --- what the fuzzing found, as plain examples --------------------------------------------------


def mapper(fmt: Format, holding: bool = False, **kw: Any) -> Mapper:
    rules = MappingRules(TopicTemplate("plant/{line}/sensor/{sensor}/{measurement}"), fmt, **kw)
    clock = IngestClock(NOW - 1)
    clock.holding = holding
    return Mapper([Route(rules, 1, "plant")], clock, 1 << 20)


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("plant/l1/sensor/s1/temp", b'{"v": 1, "s": "\\ud800"}'),
        ("plant/l1/sensor/s1/temp", b'{"\\udc80": 1}'),
        ("plant/l1/sensor/s1/\udc80", b"21.5"),  # the ack shim's decoding of the byte 0x80
    ],
)
def test_text_utf8_cannot_carry_is_set_aside_not_stored(
    tmp_path: Path, topic: str, payload: bytes
) -> None:
    """A lone surrogate (a JSON escape, or a topic byte that is not UTF-8) mapped fine and then
    made the spool's encode raise, again after every restart."""
    out = Prepared()
    json_payload = payload.startswith(b"{")
    mapping = mapper("json" if json_payload else "value")
    good = b'{"v": 2}' if json_payload else b"2"
    with standing_clocks():
        mapping.add(topic, payload, out)
        mapping.add("plant/l1/sensor/s1/temp", good, out)
    assert [record["reason"] for record in out.bad] == ["unrepresentable"]
    [body] = out.raw
    assert list(parse_line(body.decode()).fields.values()) == [2.0]
    write_dead_letters(tmp_path / "dead.jsonl", out.bad)


def test_a_payload_stamp_equal_to_a_boot_stamp_stays_the_payloads() -> None:
    """Held lines were told apart by value: a payload timestamp equal to the boot-clock stamp
    of another line in the message was marked boot-stamped, and so re-stamped when placed."""
    out = Prepared()
    with standing_clocks():
        mapper("influx", holding=True, precision="ms").add(
            "plant/l1/sensor/s1/temp", b"m m=0i\nm m=0i 5000", out
        )
    assert out.held == [
        b"B m,line=l1,sensor=s1 m=0i 5000000000",
        b"W m,line=l1,sensor=s1 m=0i 5000000000",
    ]


LOGGED_INTAKE = """
import sys
from agent import logs
from agent.parse.clock import IngestClock
from agent.parse.payload import MappingRules
from agent.parse.topic import TopicTemplate
from agent.redact import Redactor
from agent.source.mapping import Mapper, Prepared, Route

logs.setup(sys.argv[1], "info", Redactor(["s3cret"]))
rules = MappingRules(TopicTemplate("plant/{line}/{measurement}"), "json")
route = Route(rules, 1, "plant")
out = Prepared()
messages = [
    ("plant/\\udcff/m", b'{"v": 1}'),
    ("plant/l1/m", b'{"v": 1, "s": "\\\\ud800"}'),
    ("plant/l1/\\x00\\n\\u2028", b"\\xff\\xfe"),
    ("\\ud800/\\U0001f600", b"[" * 5000),
]
for topic, payload in messages:
    Mapper([route], IngestClock(), 1 << 20).add(topic, payload, out)
    Mapper([route, route], IngestClock(), 1 << 20).add(topic, payload, out)
print(len(out.bad))
"""


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_the_real_logs_take_whatever_intake_sets_aside(log_format: str) -> None:
    """Mapper.add logs the messages it sets aside outside its own try: the agent's own logging,
    to a stderr that is not a terminal and whose locale is ASCII, must take any topic."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    done = subprocess.run(
        [sys.executable, "-c", LOGGED_INTAKE, log_format],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout == b"8\n"
    assert done.stderr.count(b"payload_rejected") == 8
