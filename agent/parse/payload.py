"""Map one MQTT message (topic + payload) to line-protocol lines under a subscription's rules.

Tag precedence: topic captures < the payload's own tags < the gateway's static tags (agent and
subscription), so a publisher cannot relabel its readings as another plant's; with
``override_tags`` the static tags come first and the topic and payload may override them. An empty
value counts as absent, so it never hides a lower-precedence tag. Every point leaves with a ns
timestamp, and a payload's own timestamp must lie within the clock's sanity bounds. Each point
takes its timestamp from the clock, ``next`` or ``accept``, once and in order: that is how a held
line is known to be boot-stamped (agent/clock/hold.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any, Literal, NoReturn

from agent.parse.clock import IngestClock, TimestampRejected, parse_timestamp
from agent.parse.lineprotocol import (
    FieldValue,
    LineProtocolError,
    check_name,
    encode_head,
    encode_line,
    escape_key,
    format_field,
    parse_lines,
)
from agent.parse.topic import TopicMatch, TopicTemplate

_FORMATS = ("value", "influx", "json")
_PRECISION_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_NON_FINITE_WORDS = frozenset({"nan", "inf", "infinity"})


class PayloadError(ValueError):
    """A message that cannot become points; ``reason`` is a short code for a metrics label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class MappingRules:
    """How one subscription turns topics and payloads into points; validated on construction."""

    template: TopicTemplate
    format: Literal["value", "influx", "json"]
    measurement: str = "mqtt"
    field: str = "value"
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    precision: str = "ns"
    json_time_key: str = "time"
    json_tag_keys: frozenset[str] = frozenset()
    override_tags: bool = False
    # Escaped text that depends only on the rules, computed once for the value hot path.
    _head: str = dataclasses.field(init=False, repr=False, compare=False)
    _field_text: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.format not in _FORMATS:
            raise ValueError(f"unknown payload format {self.format!r}; expected one of {_FORMATS}")
        if self.precision not in _PRECISION_NS:
            raise ValueError(f"unknown precision {self.precision!r}; expected s, ms, us or ns")
        try:
            head = encode_head(self.measurement, self.tags)
            field_text = _field_key(self.field)
        except (LineProtocolError, PayloadError) as exc:
            raise ValueError(f"invalid mapping rules: {exc}") from None
        object.__setattr__(self, "_head", head)
        object.__setattr__(self, "_field_text", field_text)


def _fail(reason: str, message: str) -> NoReturn:
    raise PayloadError(reason, message)


def _field_key(name: str) -> str:
    if not name:
        _fail("unrepresentable", "empty field key")
    try:
        check_name(name, "field key")
    except LineProtocolError as exc:
        raise PayloadError("unrepresentable", str(exc)) from None
    return escape_key(name)


def _match(rules: MappingRules, topic: str) -> TopicMatch:
    found = rules.template.match(topic)
    if found is None:
        _fail("bad_topic", f"topic {topic!r} does not match {rules.template.template!r}")
    return found


def _decode(payload: bytes) -> str:
    try:
        return payload.decode()
    except UnicodeDecodeError as exc:
        raise PayloadError("not_utf8", f"payload is not UTF-8: {exc}") from None


def _tags(rules: MappingRules, *layers: Mapping[str, str]) -> dict[str, str]:
    """The point's tags from the message's layers (lowest precedence first) and the static ones."""
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update(layer)
    if rules.override_tags:
        return {**rules.tags, **merged}
    merged.update(rules.tags)
    return merged


def _accept(clock: IngestClock, ts: int) -> int:
    try:
        return clock.accept(ts)
    except TimestampRejected as exc:
        raise PayloadError(exc.reason, str(exc)) from None


def _encode(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], ts: int
) -> str:
    try:
        return encode_line(measurement, tags, fields, ts)
    except LineProtocolError as exc:
        raise PayloadError("unrepresentable", str(exc)) from None


def _string_field(text: str) -> str:
    try:
        return format_field(text)
    except LineProtocolError as exc:
        raise PayloadError("unrepresentable", str(exc)) from None


def _value_field(payload: bytes) -> str:
    """A bare payload as formatted field text: bool, else float, else string."""
    stripped = payload.strip()
    if not stripped:
        _fail("empty", "empty payload")
    text = _decode(stripped)
    if len(text) in (4, 5):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered
    try:
        number = float(text)
    except ValueError:
        return _string_field(text)
    if not text.isascii() or "_" in text:
        return _string_field(text)  # float() also reads "1_0" and non-ASCII digits
    if math.isfinite(number):
        return repr(number)
    if text.lstrip("+-").lower() in _NON_FINITE_WORDS:
        return _string_field(text)
    _fail("unrepresentable", f"number {text!r} is outside the float range")


def _map_value(rules: MappingRules, topic: str, payload: bytes, clock: IngestClock) -> list[str]:
    found = _match(rules, topic)
    value = _value_field(payload)
    if found.tags or found.measurement is not None:
        measurement = rules.measurement if found.measurement is None else found.measurement
        tags = _tags(rules, found.tags) if rules.tags else found.tags
        try:
            head = encode_head(measurement, tags)
        except LineProtocolError as exc:
            raise PayloadError("unrepresentable", str(exc)) from None
    else:
        head = rules._head
    key = rules._field_text if found.field is None else _field_key(found.field)
    return [f"{head} {key}={value} {clock.next()}"]


def _map_influx(rules: MappingRules, topic: str, payload: bytes, clock: IngestClock) -> list[str]:
    found = _match(rules, topic)
    try:
        points = parse_lines(_decode(payload))
    except LineProtocolError as exc:
        raise PayloadError("bad_line_protocol", str(exc)) from None
    if not points:
        _fail("empty", "payload has no line-protocol lines")
    scale = _PRECISION_NS[rules.precision]
    lines = []
    for point in points:
        if point.ts_ns is None:
            ts = clock.next()
        else:
            ts = point.ts_ns * scale
            if not _INT64_MIN <= ts <= _INT64_MAX:
                _fail("bad_timestamp", f"timestamp {point.ts_ns} {rules.precision} is out of range")
            ts = _accept(clock, ts)
        tags = _tags(rules, found.tags, point.tags)
        lines.append(_encode(point.measurement, tags, point.fields, ts))
    return lines


def _leaves(obj: Mapping[str, Any], skip: str) -> Iterator[tuple[str, Any]]:
    """(key, leaf) pairs in document order, nested objects joined with '_'.

    Iterative, because json.loads accepts nesting deeper than the room left on the call stack.
    """
    stack: list[tuple[str, Iterator[tuple[str, Any]]]] = [("", iter(obj.items()))]
    while stack:
        prefix, items = stack[-1]
        for key, value in items:
            if isinstance(value, dict):
                stack.append((f"{prefix}{key}_", iter(value.items())))
                break
            if prefix or key != skip:
                yield prefix + key, value
        else:
            stack.pop()


def _json_field(key: str, value: Any) -> FieldValue | None:
    """A JSON leaf as a field: numbers as floats (as in the value format); None to skip."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            _fail("unrepresentable", f"number in {key!r} is outside the float range")
        if not math.isfinite(number):
            _fail("unrepresentable", f"number in {key!r} is not finite")
        return number
    return None


def _json_point(
    rules: MappingRules,
    measurement: str,
    topic_tags: Mapping[str, str],
    obj: Mapping[str, Any],
    clock: IngestClock,
) -> str:
    """One object as a line; a json_tag_keys leaf that is a scalar becomes a tag (as JSON text)."""
    payload_tags: dict[str, str] = {}
    fields: dict[str, FieldValue] = {}
    for key, leaf in _leaves(obj, rules.json_time_key):
        if key in rules.json_tag_keys and isinstance(leaf, str | int | float):
            if leaf != "":
                payload_tags[key] = leaf if isinstance(leaf, str) else json.dumps(leaf)
            continue
        value = _json_field(key, leaf)
        if value is not None:
            fields[key] = value
    if not fields:
        _fail("no_fields", "JSON object has no number, bool or string value")
    if rules.json_time_key in obj:
        try:
            ts = parse_timestamp(obj[rules.json_time_key])
        except ValueError as exc:
            raise PayloadError("bad_timestamp", str(exc)) from None
        ts = _accept(clock, ts)
    else:
        ts = clock.next()
    return _encode(measurement, _tags(rules, topic_tags, payload_tags), fields, ts)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _map_json(rules: MappingRules, topic: str, payload: bytes, clock: IngestClock) -> list[str]:
    found = _match(rules, topic)
    text = _decode(payload)
    if not text.strip():
        _fail("empty", "empty payload")
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("bad_json", f"invalid JSON: {exc}") from None
    objects = document if isinstance(document, list) else [document]
    if not objects:
        _fail("no_fields", "JSON payload is an empty list")
    if not all(isinstance(obj, dict) for obj in objects):
        _fail("bad_json", "JSON payload must be an object or a list of objects")
    measurement = rules.measurement if found.measurement is None else found.measurement
    return [_json_point(rules, measurement, found.tags, obj, clock) for obj in objects]


_MAPPERS = {"value": _map_value, "influx": _map_influx, "json": _map_json}


def map_payload(rules: MappingRules, topic: str, payload: bytes, clock: IngestClock) -> list[str]:
    """Turn one message into line-protocol lines (no trailing newline); raises PayloadError."""
    return _MAPPERS[rules.format](rules, topic, payload, clock)
