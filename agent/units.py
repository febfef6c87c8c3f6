"""Human-friendly durations ("1m30s") and sizes ("1GiB") for the config file."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a Go-style string such as "1h30m", "500ms", "7d"; as
    in Go, "0" needs no unit (an environment variable's "0" turns a feature off)."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '1m30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text == "0":
            return 0.0
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            raise ValueError(
                f"cannot read {value!r} as a duration (examples: '500ms', '1m30s', '7d')"
            )
    else:
        raise ValueError("a duration must be a number of seconds or a string like '1m30s'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as "1GiB", "500MB", "64KiB"."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '1GiB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"cannot read {value!r} as a size (examples: '512MiB', '1GiB', '2GB')")
        size = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()])
    else:
        raise ValueError("a size must be a number of bytes or a string like '1GiB'")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
