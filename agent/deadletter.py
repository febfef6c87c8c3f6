"""Dead letters: what the agent set aside for a person to read and, once fixed, replay.

One JSON object per line, append-only, flushed and fsynced before the message that produced it
is acknowledged. Each file is capped; the full one is rotated to ``.1`` so a stream of garbage
can never fill the disk.
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
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > self.max_bytes:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def payload_record(topic: str, payload: bytes, reason: str, error: str) -> dict[str, Any]:
    """A malformed MQTT payload, kept byte-exact (base64 when it is not UTF-8)."""
    record: dict[str, Any] = {"time": time.time(), "topic": topic, "reason": reason, "error": error}
    try:
        record["payload"] = payload.decode()
    except UnicodeDecodeError:
        record["payload_base64"] = base64.b64encode(payload).decode()
    return record


def line_record(line: str, status: int, error: str) -> dict[str, Any]:
    """A line the server refused for good, with its answer; replayable as line protocol."""
    return {"time": time.time(), "status": status, "error": error, "line": line}
