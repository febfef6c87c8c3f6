"""Dead letters: what the agent set aside for a person to read and, once fixed, replay.

One JSON object per line, append-only, flushed and fsynced before the message that produced it
is acknowledged. Each file is capped; the full one is rotated to ``.1`` so a stream of garbage
can never fill the disk. Records are plain ASCII JSON: whatever a publisher sent (bytes that are
not UTF-8, lone surrogates), writing its record cannot fail on the text.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 64 * 1024 * 1024


class DeadLetters:
    def __init__(self, path: Path, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def write(self, records: list[dict[str, Any]]) -> None:
        """Raises OSError (disk full, read-only, permissions): the caller must not acknowledge
        or move past what these records stand for until a retry succeeds."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > self.max_bytes:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        data = "".join(json.dumps(r) + "\n" for r in records)
        with self.path.open("a", encoding="ascii") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def _text(record: dict[str, Any], key: str, raw: bytes) -> None:
    """``key`` as text when it is UTF-8, else ``key_base64``, so the record stays byte-exact."""
    try:
        record[key] = raw.decode()
    except UnicodeDecodeError:
        record[f"{key}_base64"] = base64.b64encode(raw).decode()


def _topic_bytes(topic: str) -> bytes:
    """The topic as received: the ack shim decodes bytes that are not UTF-8 as escapes."""
    try:
        return topic.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return topic.encode("utf-8", "surrogatepass")


def payload_record(
    topic: str, payload: bytes, reason: str, error: str, size: int | None = None
) -> dict[str, Any]:
    """A message set aside at intake. ``size``: the payload's full size when only a sample of it
    is kept (a payload too large to parse)."""
    record: dict[str, Any] = {"time": time.time(), "reason": reason, "error": error}
    _text(record, "topic", _topic_bytes(topic))
    _text(record, "payload", payload)
    if size is not None:
        record["payload_size"] = size
    return record


def held_record(line: str, reason: str, error: str) -> dict[str, Any]:
    """A reading held for the clock that could not be placed on it; replayable once fixed."""
    return {"time": time.time(), "reason": reason, "error": error, "line": line}


def line_record(line: str, status: int, error: str) -> dict[str, Any]:
    """A line the server refused for good, with its answer; replayable as line protocol."""
    return {"time": time.time(), "status": status, "error": error, "line": line}
