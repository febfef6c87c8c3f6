"""Dead letters: what the agent set aside for a person to read and, once fixed, replay.

One JSON object per line, append-only, flushed and fsynced before the message that produced it
is acknowledged. Each file is capped; the full one is rotated to ``.1`` so a stream of garbage
can never fill the disk. Records are plain ASCII JSON: whatever a publisher sent (bytes that are
not UTF-8, lone surrogates), writing its record cannot fail on the text.

Appends, rotation and a replay taking a file aside (``edge-agent dead-letters replay``, another
process) hold an flock on the directory, so a record is never written into a file being taken.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 64 * 1024 * 1024


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Exclusive use of the dead-letter files in ``directory`` across processes."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DeadLetters:
    def __init__(self, path: Path, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes

    @property
    def rotated(self) -> Path:
        return self.path.with_name(self.path.name + ".1")

    def write(self, records: list[dict[str, Any]]) -> None:
        """Raises OSError (disk full, read-only, permissions): the caller must not acknowledge
        or move past what these records stand for until a retry succeeds."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(r) + "\n" for r in records)
        with locked(self.path.parent):
            if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                os.replace(self.path, self.rotated)
            with self.path.open("a", encoding="ascii") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())

    def take(self, into: Path, first: int) -> list[Path]:
        """Move both files (the rotated one first: it is older) into the directory ``into``
        (on the same file system), named by sequence numbers from ``first``; the next write
        starts a new file."""
        taken: list[Path] = []
        if not self.path.parent.is_dir():
            return taken
        with locked(self.path.parent):
            for source in (self.rotated, self.path):
                target = into / f"{first + len(taken):012d}.jsonl"
                with contextlib.suppress(FileNotFoundError):
                    os.rename(source, target)
                    taken.append(target)
            if taken:
                fsync_dir(into)
                fsync_dir(self.path.parent)
        return taken


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
