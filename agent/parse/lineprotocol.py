"""InfluxDB line protocol: escaping, encoding and a strict parser.

Escaping follows the InfluxDB specification: in a measurement ``,`` `` `` and ``\\`` are
escaped; in tag keys, tag values and field keys ``,`` ``=`` `` `` and ``\\``. A backslash is
escaped only where it has to be (before another backslash, before a character that needs
escaping, or at the end of the name), so a name whose backslashes are all followed by an
ordinary character (``C:\\temp``) is written byte for byte and read identically by every
InfluxDB version. InfluxDB 1.x/2.x (Go) have no escape for the backslash itself: they keep
``\\\\`` as two backslashes and reject or misread a name with a backslash before another one,
before an escaped character or at its end. Such names still round-trip through this module and
through parsers that follow the specification (e.g. VictoriaMetrics).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

FieldValue = float | int | bool | str


class LineProtocolError(ValueError):
    """A point that line protocol cannot carry, or text that is not valid line protocol."""


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1

# A backslash needs escaping when it precedes a character that is itself escaped, another
# backslash, or the end of the name (it would otherwise escape the separator that follows).
_MEASUREMENT_BACKSLASH = re.compile(r"\\(?=[\\, ]|\Z)")
_KEY_BACKSLASH = re.compile(r"\\(?=[\\,= ]|\Z)")

_MEASUREMENT_STOP = re.compile(r"[\\, ]")
_KEY_STOP = re.compile(r"[\\,= ]")
_STRING_STOP = re.compile(r'[\\"]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_VALUE_END = re.compile(r"[, ]")
_MEASUREMENT_ESCAPABLE = "\\, "
_KEY_ESCAPABLE = "\\,= "

# Bounded digit counts keep int() away from its huge-string limit (which raises ValueError).
_INT = re.compile(r"-?[0-9]{1,20}")
_UINT = re.compile(r"[0-9]{1,20}")
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TIMESTAMP = re.compile(r"(-?[0-9]{1,20}) *")
_BOOLS = {
    "t": True,
    "T": True,
    "true": True,
    "True": True,
    "TRUE": True,
    "f": False,
    "F": False,
    "false": False,
    "False": False,
    "FALSE": False,
}


def check_name(name: str, what: str) -> None:
    """Names (measurement, tag keys and values, field keys) are identifiers in every query
    language and dashboard downstream: an ASCII control character in one is always garbage (and
    a line break would end the line). String field values may hold anything but a line break."""
    found = _CONTROL.search(name)
    if found is not None:
        raise LineProtocolError(f"control character {found.group()!r} in {what} {name!r}")


def escape_measurement(name: str) -> str:
    """Escape a measurement name (commas, spaces, and backslashes where needed)."""
    if "\\" in name:
        name = _MEASUREMENT_BACKSLASH.sub(r"\\\\", name)
    elif " " not in name and "," not in name:
        return name
    return name.replace(",", "\\,").replace(" ", "\\ ")


def escape_key(key: str) -> str:
    """Escape a tag key, tag value or field key (commas, equals signs, spaces, backslashes)."""
    if "\\" in key:
        key = _KEY_BACKSLASH.sub(r"\\\\", key)
    elif " " not in key and "," not in key and "=" not in key:
        return key
    return key.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def format_field(value: FieldValue) -> str:
    """Format a field value with its line-protocol type marker."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise LineProtocolError(f"integer {value} is outside the int64 range")
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"float field value {value} is not finite")
        return repr(value)
    if "\n" in value or "\r" in value:
        raise LineProtocolError("string field value contains a line break")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_head(measurement: str, tags: Mapping[str, str]) -> str:
    """The series part of a line: escaped measurement and tags sorted by key."""
    if not measurement:
        raise LineProtocolError("empty measurement")
    if measurement[0] == "#":
        raise LineProtocolError("measurement starts with '#', which would make the line a comment")
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        if not key:
            raise LineProtocolError("empty tag key")
        value = tags[key]
        if value:
            parts.append(f"{escape_key(key)}={escape_key(value)}")
    head = ",".join(parts)
    found = _CONTROL.search(head)
    if found is not None:
        raise LineProtocolError(f"control character {found.group()!r} in the measurement or a tag")
    return head


def encode_line(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
    ts_ns: int,
) -> str:
    """Encode one point; tags sorted by key, empty tag values skipped."""
    head = encode_head(measurement, tags)
    if not fields:
        raise LineProtocolError(f"point in {measurement!r} has no fields")
    if not _INT64_MIN <= ts_ns <= _INT64_MAX:
        raise LineProtocolError(f"timestamp {ts_ns} is outside the int64 range")
    parts = []
    for key, value in fields.items():
        if not key:
            raise LineProtocolError("empty field key")
        check_name(key, "field key")
        parts.append(f"{escape_key(key)}={format_field(value)}")
    return f"{head} {','.join(parts)} {ts_ns}"


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """One parsed point; ``ts_ns`` is the raw timestamp (in the writer's precision) or None."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    ts_ns: int | None


def _error(what: str, pos: int) -> LineProtocolError:
    return LineProtocolError(f"{what} at column {pos + 1}")


def _scan_name(line: str, pos: int, stop: re.Pattern[str], escapable: str) -> tuple[str, int]:
    """Read an escaped name from ``pos`` up to the first unescaped separator (or the end)."""
    chunks: list[str] = []
    start = pos
    while (found := stop.search(line, pos)) is not None:
        i = found.start()
        if line[i] != "\\":
            chunks.append(line[start:i])
            return "".join(chunks), i
        following = line[i + 1 : i + 2]
        if following and following in escapable:
            chunks.append(line[start:i])
            chunks.append(following)
            start = pos = i + 2
        else:
            pos = i + 1
    chunks.append(line[start:])
    return "".join(chunks), len(line)


def _scan_string(line: str, pos: int) -> tuple[str, int]:
    """Read a quoted string whose opening quote is at ``pos``; returns the index after it."""
    chunks: list[str] = []
    start = scan = pos + 1
    while (found := _STRING_STOP.search(line, scan)) is not None:
        i = found.start()
        if line[i] == '"':
            chunks.append(line[start:i])
            return "".join(chunks), i + 1
        following = line[i + 1 : i + 2]
        if following in ('"', "\\"):
            chunks.append(line[start:i])
            chunks.append(following)
            start = scan = i + 2
        else:
            scan = i + 1
    raise _error("unterminated string field value", pos)


def _scalar(token: str, pos: int) -> FieldValue:
    """Decode an unquoted field value: integer, unsigned, boolean or float."""
    last = token[-1]
    if last == "i" and _INT.fullmatch(token, 0, len(token) - 1):
        number = int(token[:-1])
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise _error(f"integer {token!r} is outside the int64 range", pos)
        return number
    if last == "u" and _UINT.fullmatch(token, 0, len(token) - 1):
        number = int(token[:-1])
        if number > _UINT64_MAX:
            raise _error(f"unsigned {token!r} is outside the uint64 range", pos)
        return number
    boolean = _BOOLS.get(token)
    if boolean is not None:
        return boolean
    if _FLOAT.fullmatch(token):
        value = float(token)
        if math.isinf(value):
            raise _error(f"float {token!r} is out of range", pos)
        return value
    raise _error(f"invalid field value {token!r}", pos)


def _field_value(line: str, pos: int) -> tuple[FieldValue, int]:
    """Read a field value at ``pos``; returns it and the index of what follows."""
    if line.startswith('"', pos):
        value, end = _scan_string(line, pos)
        if end < len(line) and line[end] not in ", ":
            raise _error("unexpected character after string field value", end)
        return value, end
    found = _VALUE_END.search(line, pos)
    end = len(line) if found is None else found.start()
    if end == pos:
        raise _error("missing field value", pos)
    return _scalar(line[pos:end], pos), end


def _skip_spaces(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] == " ":
        pos += 1
    return pos


def _tags(line: str, pos: int) -> tuple[dict[str, str], int]:
    """Read ``,k=v`` pairs starting at the comma at ``pos``; returns them and the space index."""
    tags: dict[str, str] = {}
    end = len(line)
    while pos < end and line[pos] == ",":
        key, pos = _scan_name(line, pos + 1, _KEY_STOP, _KEY_ESCAPABLE)
        if not key:
            raise _error("missing tag key", pos)
        if pos == end or line[pos] != "=":
            raise _error("tag key without '=' and value", pos)
        if key in tags:
            raise _error(f"duplicate tag key {key!r}", pos)
        value, value_end = _scan_name(line, pos + 1, _KEY_STOP, _KEY_ESCAPABLE)
        if not value:
            raise _error(f"missing value for tag {key!r}", pos + 1)
        if value_end < end and line[value_end] == "=":
            raise _error("unescaped '=' in tag value", value_end)
        tags[key] = value
        pos = value_end
    return tags, pos


def _fields(line: str, pos: int) -> tuple[dict[str, FieldValue], int]:
    """Read ``k=v[,k=v...]`` from ``pos``; returns the fields and the index after them."""
    fields: dict[str, FieldValue] = {}
    end = len(line)
    while True:
        key, pos = _scan_name(line, pos, _KEY_STOP, _KEY_ESCAPABLE)
        if not key:
            raise _error("missing field key", pos)
        if pos == end or line[pos] != "=":
            raise _error("field key without '=' and value", pos)
        fields[key], pos = _field_value(line, pos + 1)
        if pos == end or line[pos] == " ":
            return fields, pos
        pos += 1


def parse_line(line: str) -> ParsedLine:
    """Parse one line of line protocol strictly, unescaping names and string values."""
    for newline in ("\n", "\r"):
        if newline in line:
            raise _error("line break", line.index(newline))
    measurement, pos = _scan_name(line, 0, _MEASUREMENT_STOP, _MEASUREMENT_ESCAPABLE)
    if not measurement:
        raise _error("missing measurement", pos)
    tags, pos = _tags(line, pos)
    if pos == len(line):
        raise _error("missing fields", pos)
    fields, pos = _fields(line, _skip_spaces(line, pos))
    pos = _skip_spaces(line, pos)
    if pos == len(line):
        return ParsedLine(measurement, tags, fields, None)
    found = _TIMESTAMP.fullmatch(line, pos)
    if found is None:
        raise _error("invalid timestamp", pos)
    ts = int(found.group(1))
    if not _INT64_MIN <= ts <= _INT64_MAX:
        raise _error("timestamp outside the int64 range", pos)
    return ParsedLine(measurement, tags, fields, ts)


def parse_lines(text: str) -> list[ParsedLine]:
    """Parse newline-separated points, skipping blank lines and ``#`` comments (CRLF allowed)."""
    points = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip(" \t") or line[0] == "#":
            continue
        try:
            points.append(parse_line(line))
        except LineProtocolError as exc:
            raise LineProtocolError(f"line {number}: {exc}") from None
    return points
