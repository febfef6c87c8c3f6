"""Times an operator types (``--since``, ``--until``) and the timestamp a stored line carries, both
in nanoseconds since the epoch: line timestamps are exact to the nanosecond, and a filter must
cut exactly where it says."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from agent.ops.render import UsageError
from agent.units import parse_duration

NS = 1_000_000_000
_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


def parse_time(text: str, now_ns: int) -> int:
    """RFC 3339 with a zone ("2024-05-01T06:00:00Z", "...06:00:00.5+02:00", up to nine digits
    of fraction), or a duration back from now ("2h", "1d12h", "90m"). A time without a zone is
    refused: read on a gateway in one zone and a laptop in another, it would cut differently."""
    value = text.strip()
    found = _RFC3339.fullmatch(value)
    if found is not None:
        date, clock, fraction, zone = found.groups()
        offset = "+00:00" if zone in ("Z", "z") else zone
        try:
            moment = datetime.fromisoformat(f"{date}T{clock}{offset}")
        except ValueError as exc:
            raise UsageError(f"{text!r} is not a valid time: {exc}") from None
        seconds = (moment - _EPOCH) // timedelta(seconds=1)
        return seconds * NS + int((fraction or "").ljust(9, "0"))
    try:
        back = parse_duration(value)
    except ValueError:
        raise UsageError(
            f"cannot read {text!r} as a time: give RFC 3339 with a zone "
            "('2024-05-01T06:00:00Z', '2024-05-01T08:00:00+02:00') or a duration back from now "
            "('2h', '1d12h')"
        ) from None
    return now_ns - round(back * NS)


def line_time(line: bytes) -> int | None:
    """The timestamp a line of line protocol ends with, None if it has none. After a line's last
    space comes its timestamp or the tail of its field set, which holds a '=' or ends with a
    quote; so a bare integer there is the timestamp, read without parsing the whole line."""
    head, space, token = line.rpartition(b" ")
    if not space or not head:
        return None
    digits = token[1:] if token.startswith(b"-") else token
    if not digits.isdigit():
        return None
    return int(token)
