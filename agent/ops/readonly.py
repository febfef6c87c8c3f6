"""The spool read from outside the agent, beside a running one or without one.

A read-only SQLite connection: it cannot write the database, and takes no lock a writer waits
for. In WAL mode a reader sees the last commit while the agent keeps committing; what a reader
can hold up is a checkpoint that resets the WAL, so every query is short and fetched whole (its
own read transaction, or a few in one ``snapshot``) and none stays open while a person reads or
a pipe drains. A deadline on each statement (SQLite's progress handler) bounds the rest.

Opening an idle spool read-only creates its ``-wal`` and ``-shm`` files if they are missing,
with the database's owner and mode (SQLite does so even when run as root); the agent uses them
as its own.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.ops.render import CannotRun
from agent.spool.chunks import SEGMENT, Position, decode

STATEMENT_SECONDS = 10.0
PAGE_ROWS = 16
ACCESS = "(run as the agent's user, or root)"  # chunks fetched per query: bodies load whole


@dataclass(frozen=True, slots=True)
class Chunk:
    id: int
    stream: str
    lines: int
    size: int  # of the lines, newlines included (the ``bytes`` column)
    body: bytes
    codec: int
    stored: int | None
    crc: int | None

    def text(self) -> bytes:
        """The lines, newline-joined (no final newline); raises zlib.error on a damaged body."""
        return decode(self.body, self.codec)


@dataclass(frozen=True, slots=True)
class StreamRange:
    first: int
    last: int
    chunks: int
    lines: int
    stored: int  # bytes on disk, as the size budget counts them


class Reader:
    def __init__(self, path: Path, seconds: float = STATEMENT_SECONDS) -> None:
        self.path = path
        self.seconds = seconds
        require(path)
        try:
            self.conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=2.0
            )
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.Error as exc:
            raise CannotRun(f"cannot read the spool {path}: {exc}") from exc
        if not {"chunks", "cursors", "meta"} <= tables:
            self.conn.close()
            raise CannotRun(f"{path} is not an edge-agent spool (no chunks, cursors, meta)")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rows(self, sql: str, args: tuple[Any, ...] = (), seconds: float | None = None) -> list[Any]:
        """All rows of one statement, interrupted past its deadline (exit 3, not a hang)."""
        limit = self.seconds if seconds is None else seconds
        deadline = time.monotonic() + limit
        self.conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise CannotRun(f"reading the spool took longer than {limit:g}s: {sql}") from exc
            raise CannotRun(f"cannot read the spool {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise CannotRun(f"cannot read the spool {self.path}: {exc}") from exc
        finally:
            self.conn.set_progress_handler(None, 0)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Several queries that must agree (cursors and the chunks they point into): one read
        transaction, a few milliseconds long."""
        self.rows("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    # -- facts -----------------------------------------------------------------------------------

    def cursors(self) -> dict[tuple[str, str], Position]:
        rows = self.rows("SELECT consumer, stream, chunk, line FROM cursors")
        return {(c, s): Position(int(chunk), int(line)) for c, s, chunk, line in rows}

    def streams(self) -> dict[str, StreamRange]:
        rows = self.rows(
            "SELECT stream, min(id), max(id), count(*), sum(lines), sum(coalesce(stored, bytes)) "
            "FROM chunks GROUP BY stream"
        )
        return {r[0]: StreamRange(*(int(v) for v in r[1:])) for r in rows}

    def meta(self, key: str) -> int | None:
        row = self.rows("SELECT value FROM meta WHERE key=?", (key,))
        return int(row[0][0]) if row else None

    def last_id(self) -> int:
        """The newest chunk id ever given out (as the agent computes it at open)."""
        newest = self.rows("SELECT max(id) FROM chunks")[0][0]
        return max(int(newest or 0), self.meta("last_chunk") or 0)

    def chunk_lines(self, cid: int, stream: str) -> int | None:
        row = self.rows("SELECT lines FROM chunks WHERE id=? AND stream=?", (cid, stream))
        return int(row[0][0]) if row else None

    def chunks(self, stream: str | None, first: int, last: int | None = None) -> Iterator[Chunk]:
        """Chunks with ids from ``first`` (through ``last``), of one stream or all, a page per
        query. Chunks the agent deletes meanwhile are simply not seen."""
        where = "id >= ?" + ("" if last is None else " AND id <= ?")
        args: tuple[Any, ...] = (first,) if last is None else (first, last)
        if stream is not None:
            where += " AND stream = ?"
            args += (stream,)
        while True:
            page = self.rows(
                "SELECT id, stream, lines, bytes, body, codec, stored, crc FROM chunks "
                f"WHERE {where} ORDER BY id LIMIT {PAGE_ROWS}",
                args,
            )
            for row in page:
                yield Chunk(int(row[0]), row[1], int(row[2]), int(row[3]), bytes(row[4]), *row[5:])
            if len(page) < PAGE_ROWS:
                return
            args = (page[-1][0] + 1, *args[1:])

    def backlog(self, stream: str, pos: Position) -> tuple[int, int]:
        """Lines and line bytes (newlines included, as an export writes them) from ``pos``."""
        counted = self.rows(
            "SELECT coalesce(sum(lines), 0), coalesce(sum(bytes), 0) FROM chunks "
            f"WHERE stream=? AND id>=? AND codec={SEGMENT}",
            (stream, pos.chunk),
        )[0]
        lines, size = int(counted[0]), int(counted[1])
        others = self.rows(  # decoded: legacy chunks, and the one the cursor is inside
            "SELECT id FROM chunks WHERE stream=? AND id>=? "
            f"AND (codec!={SEGMENT} OR (id=? AND ?>0))",
            (stream, pos.chunk, pos.chunk, pos.line),
        )
        for (cid,) in others:
            chunk = next(self.chunks(stream, cid, cid))
            skip = pos.line if cid == pos.chunk else 0
            text = _lines(chunk)
            if chunk.codec == SEGMENT:  # counted whole above: take back what is behind pos
                lines -= min(skip, chunk.lines)
                size -= sum(len(line) + 1 for line in text[:skip])
            else:
                lines += max(0, chunk.lines - skip)
                size += sum(len(line) + 1 for line in text[skip:])
        return lines, size

    def first_line(self, stream: str, pos: Position) -> bytes | None:
        """The line at ``pos`` (the next one a consumer there reads), None past the end."""
        for chunk in self.chunks(stream, pos.chunk):
            skip = pos.line if chunk.id == pos.chunk else 0
            text = _lines(chunk)
            if skip < len(text):
                return text[skip]
        return None


def start_of(stream: StreamRange | None, last_id: int) -> Position:
    """Where the agent starts a consumer it registers: the stream's first chunk, or past the
    newest chunk of an empty stream."""
    return Position(stream.first if stream else last_id + 1, 0)


def require(path: Path) -> None:
    """CannotRun unless the spool file is there to be read."""
    try:
        path.stat()
    except FileNotFoundError:
        raise CannotRun(f"no spool at {path}: has the agent run with this data_dir?") from None
    except OSError as exc:
        raise CannotRun(f"cannot read the spool {path}: {exc.strerror} {ACCESS}") from None


def _lines(chunk: Chunk) -> list[bytes]:
    try:
        return chunk.text().split(b"\n")
    except zlib.error as exc:
        raise CannotRun(
            f"chunk {chunk.id} of stream {chunk.stream!r} does not decode ({exc}): "
            "run 'edge-agent spool check'"
        ) from exc
