"""Read the raw stream's lines back as readings: series text, measurement, numeric fields, time.

The spool holds line protocol the agent wrote itself, canonical and always timestamped, so most
lines take a split-based fast path; a line with quotes or backslashes goes through the strict
parser. String and boolean fields are not aggregated.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from agent.parse.lineprotocol import (
    LineProtocolError,
    encode_head,
    escape_measurement,
    parse_line,
)


class Reading(NamedTuple):
    head: str  # escaped measurement and tags, exactly as in the line
    measurement: str
    fields: list[tuple[str, float]]
    ts: int


def read_line(line: str) -> Reading:
    """Raises LineProtocolError for a line that is not a timestamped point."""
    if '"' in line or "\\" in line:
        return _read_strict(line)
    parts = line.split(" ")
    if len(parts) != 3:
        return _read_strict(line)
    head, field_text, ts = parts
    fields = []
    for item in field_text.split(","):
        key, _, token = item.partition("=")
        value = _number(token)
        if value is not None:
            fields.append((key, value))
    return Reading(head, head.partition(",")[0], fields, int(ts))


def _number(token: str) -> float | None:
    last = token[-1:]
    if last in ("i", "u"):
        return float(int(token[:-1]))
    if last in ("t", "T", "e", "E", "f", "F"):
        return None  # booleans: t, true, f, false in any documented spelling
    value = float(token)
    return value if math.isfinite(value) else None


def _read_strict(line: str) -> Reading:
    point = parse_line(line)
    if point.ts_ns is None:
        raise LineProtocolError("raw line without a timestamp")
    fields = [
        (key, float(value))
        for key, value in point.fields.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    head = encode_head(point.measurement, point.tags)
    return Reading(head, point.measurement, fields, point.ts_ns)


def output_head(reading: Reading, suffix: str) -> str:
    """The aggregate's series text: the reading's, with ``suffix`` added to the measurement."""
    if not suffix:
        return reading.head
    if "\\" not in reading.head:
        _, sep, tag_text = reading.head.partition(",")
        return escape_measurement(reading.measurement + suffix) + sep + tag_text
    return encode_head(reading.measurement + suffix, parse_line(f"{reading.head} x=1").tags)
