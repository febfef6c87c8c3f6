"""The queue: chunks of line protocol, one per stream and write.

A chunk is what one group commit wrote to one stream: many lines in one row, so the per-reading
cost of durability is a memcpy, not a B-tree insert. Its body is a compressed segment
(deflate.py), which cuts what an SD card is written per reading to a fraction of the line's size
and which an output sends as it is. A consumer's position is (chunk id, line index); ids only
grow, so a position stays meaningful after the chunks before it are deleted or dropped. A chunk's
``created`` is read on the spool's age clock (budget.py), which wall-clock steps cannot move.

Everything here runs on the spool thread, inside the caller's transaction where it writes.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from agent.spool.db import Database
from agent.spool.deflate import Compressor, Segment, inflate

# How a body is stored: lines newline-joined (earlier versions), the same deflated (this
# session's first form), or a segment of newline-terminated lines (deflate.py).
PLAIN, DEFLATE, SEGMENT = 0, 1, 2
READ_ROWS = 8  # chunks per query: bodies load whole, and a backlog fetched at once costs MBs


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """The next line a consumer will read: line ``line`` of the first chunk with id >= ``chunk``."""

    chunk: int
    line: int


@dataclass(frozen=True, slots=True)
class Body:
    """Lines as one chunk body: newline-joined bytes and how many lines they are."""

    data: bytes
    lines: int


@dataclass(slots=True)
class StreamStats:
    lines: int = 0
    bytes: int = 0  # as stored on disk: what the size budget counts
    oldest: float | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """What a consumer has still to read of a stream."""

    lines: int
    stored: int  # bytes as stored (compressed); a chunk read in part counts pro rata
    oldest: float | None  # ``created`` of the chunk its next line is in; None when caught up


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Lines read from a position; ``end`` is where the consumer stands once they are delivered."""

    lines: list[bytes]
    end: Position
    bytes: int


@dataclass(slots=True)
class Batch:
    """What an output sends: whole stored segments where it can (a partial chunk re-encoded),
    its line count and size, and where the consumer stands once it is delivered. Lines are
    decoded only if the server refuses the batch and it must be split."""

    segments: list[Segment] = field(default_factory=list)
    end: Position = Position(0, 0)
    count: int = 0
    size: int = 0  # of the lines, uncompressed
    full: bool = False  # as full as whole chunks allow: more data waits behind it

    def lines(self) -> list[bytes]:
        out: list[bytes] = []
        for segment in self.segments:
            out.extend(inflate(segment.data).split(b"\n")[:-1])
        return out

    def text(self) -> bytes:
        return b"".join(inflate(segment.data) for segment in self.segments)


class Chunks:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.stats: dict[str, StreamStats] = {}
        self.appended: dict[str, int] = {}  # lines committed per stream since start
        self.last_id = 0
        self.floor = 0  # the newest receive stamp any chunk has held (see ``delete``)
        self._compressor = Compressor()  # used on the spool thread only

    def load(self) -> None:
        """At open: the stats, and the newest id ever given out (kept in meta once the table
        has been emptied, since a deleted newest row would otherwise give its id out again)."""
        conn = self.db.conn
        newest = conn.execute("SELECT max(id) FROM chunks").fetchone()[0]
        kept = conn.execute("SELECT value FROM meta WHERE key='last_chunk'").fetchone()
        self.last_id = max(int(newest or 0), int(kept[0]) if kept else 0, _sequence(conn))
        stamp = conn.execute("SELECT max(stamp) FROM chunks").fetchone()[0]
        kept = conn.execute("SELECT value FROM meta WHERE key='clock_floor'").fetchone()
        self.floor = max(int(stamp or 0), int(kept[0]) if kept else 0)
        self.reload_stats()

    def reload_stats(self) -> None:
        self.stats = {}
        for stream, lines, size, oldest in self.db.conn.execute(
            "SELECT stream, sum(lines), sum(coalesce(stored, bytes)), min(created) "
            "FROM chunks GROUP BY stream"
        ):
            self.stats[stream] = StreamStats(int(lines), int(size), float(oldest))

    def encode(self, body: Body) -> Segment:
        return self._compressor.segment(body.data + b"\n")

    def insert(
        self, stream: str, now: float, body: Body, stored: Segment, stamp: int | None = None
    ) -> int:
        """``stamp``: the newest receive stamp in the chunk. The ingest clock's floor rides in
        the row written anyway, not in a page of its own per commit."""
        self.last_id += 1
        self.db.conn.execute(
            "INSERT INTO chunks(id, stream, created, lines, bytes, body, codec, stored, stamp, "
            "crc) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                self.last_id,
                stream,
                now,
                body.lines,
                stored.size,
                stored.data,
                SEGMENT,
                len(stored.data),
                stamp,
                stored.crc,
            ),
        )
        if stamp is not None:
            self.floor = max(self.floor, stamp)
        return len(stored.data)

    def appended_to(self, stream: str, lines: int, stored: int, now: float) -> None:
        """After the transaction that inserted them committed."""
        self.appended[stream] = self.appended.get(stream, 0) + lines
        stats = self.stats.setdefault(stream, StreamStats())
        stats.lines += lines
        stats.bytes += stored
        if stats.oldest is None:
            stats.oldest = now

    def delete(self, stream: str, where: str, args: tuple[object, ...]) -> list[tuple[int, int]]:
        """Delete matching chunks of ``stream``; returns their (id, lines)."""
        conn = self.db.conn
        rows = conn.execute(
            "SELECT id, lines, coalesce(stored, bytes), coalesce(stamp, 0) "
            f"FROM chunks WHERE stream=? AND {where}",
            (stream, *args),
        ).fetchall()
        if not rows:
            return []
        if max(r[3] for r in rows) >= self.floor > 0:  # the floor's row goes: keep the floor
            conn.execute(
                "INSERT INTO meta(key, value) VALUES('clock_floor', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (self.floor,),
            )
        conn.execute(f"DELETE FROM chunks WHERE stream=? AND {where}", (stream, *args))
        stats = self.stats.setdefault(stream, StreamStats())
        stats.lines -= sum(r[1] for r in rows)
        stats.bytes -= sum(r[2] for r in rows)
        first = conn.execute(
            "SELECT created FROM chunks WHERE stream=? ORDER BY id LIMIT 1", (stream,)
        ).fetchone()
        stats.oldest = float(first[0]) if first else None
        if max(r[0] for r in rows) == self.last_id:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES('last_chunk', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (self.last_id,),
            )
        return [(int(r[0]), int(r[1])) for r in rows]

    def stream_of(self, cid: int) -> str | None:
        row = self.db.conn.execute("SELECT stream FROM chunks WHERE id=?", (cid,)).fetchone()
        return None if row is None else str(row[0])

    def streams_like(self, prefix: str) -> list[str]:
        """Streams with data whose name starts with ``prefix`` (in-memory stats: no query)."""
        return sorted(s for s, st in self.stats.items() if s.startswith(prefix) and st.lines)

    def oldest(self, stream: str) -> tuple[int, bytes] | None:
        row = self.db.conn.execute(
            "SELECT id, body, codec FROM chunks WHERE stream=? ORDER BY id LIMIT 1", (stream,)
        ).fetchone()
        return None if row is None else (int(row[0]), decode(row[1], row[2]))

    def read(self, stream: str, start: Position, max_lines: int, max_bytes: int) -> ReadResult:
        out: list[bytes] = []
        size = 0
        pos = start
        while len(out) < max_lines and size < max_bytes:
            rows = self.db.conn.execute(
                "SELECT id, lines, body, codec FROM chunks WHERE stream=? AND id>=? "
                f"ORDER BY id LIMIT {READ_ROWS}",
                (stream, pos.chunk),
            ).fetchall()
            if not rows:
                break
            for cid, nlines, body, codec in rows:
                first = pos.line if cid == pos.chunk else 0
                chunk_lines = decode(body, codec).split(b"\n")
                take = first
                while take < nlines and len(out) < max_lines:
                    line = chunk_lines[take]
                    if out and size + len(line) + 1 > max_bytes:
                        break
                    out.append(line)
                    size += len(line) + 1
                    take += 1
                pos = Position(cid + 1, 0) if take >= nlines else Position(cid, take)
                if take < nlines:
                    return ReadResult(out, pos, size)
        return ReadResult(out, pos, size)

    def read_batch(self, stream: str, start: Position, max_lines: int, max_bytes: int) -> Batch:
        """Whole chunks from ``start`` while they fit. A chunk is cut (its lines re-encoded) only
        where the batch starts inside it or fills up in it: a batch holds exactly ``max_lines``
        when that many wait, as the server's and the operator's numbers expect."""
        batch = Batch(end=start)
        pos = start
        while batch.count < max_lines and batch.size < max_bytes:
            rows = self.db.conn.execute(
                "SELECT id, lines, bytes, body, codec, crc FROM chunks WHERE stream=? AND id>=? "
                f"ORDER BY id LIMIT {READ_ROWS}",
                (stream, pos.chunk),
            ).fetchall()
            if not rows:
                break
            for cid, nlines, size, body, codec, crc in rows:
                if batch.count >= max_lines or batch.size >= max_bytes:
                    batch.end = pos
                    batch.full = True
                    return batch
                first = pos.line if cid == pos.chunk else 0
                whole = first == 0 and codec == SEGMENT
                fits = batch.count + nlines <= max_lines and batch.size + size <= max_bytes
                if whole and fits:
                    batch.segments.append(Segment(bytes(body), int(crc), int(size)))
                    batch.count += nlines
                    batch.size += size
                    pos = Position(cid + 1, 0)
                    continue
                take = self._cut(
                    batch, decode(body, codec).split(b"\n"), first, max_lines, max_bytes
                )
                pos = Position(cid + 1, 0) if take >= nlines else Position(cid, take)
                batch.end = pos
                if take < nlines:
                    batch.full = True
                    return batch
        batch.end = pos
        batch.full = batch.count >= max_lines or batch.size >= max_bytes
        return batch

    def _cut(
        self, batch: Batch, lines: list[bytes], first: int, max_lines: int, max_bytes: int
    ) -> int:
        """Lines ``first``.. of a chunk into the batch, as far as they fit; returns the index
        after the last one taken (at least one line is taken into an empty batch)."""
        take = first
        size = 0
        while take < len(lines) and batch.count + take - first < max_lines:
            length = len(lines[take]) + 1
            if (batch.count or take > first) and batch.size + size + length > max_bytes:
                break
            size += length
            take += 1
        if take == first:
            return take
        text = b"".join(line + b"\n" for line in lines[first:take])
        batch.segments.append(self._compressor.segment(text))
        batch.count += take - first
        batch.size += size
        return take

    def backlog(self, stream: str, pos: Position) -> int:
        """Lines in ``stream`` at or after ``pos``."""
        row = self.db.conn.execute(
            "SELECT coalesce(sum(lines), 0), "
            "coalesce(sum(CASE WHEN id=? THEN ? ELSE 0 END), 0) "
            "FROM chunks WHERE stream=? AND id>=?",
            (pos.chunk, pos.line, stream, pos.chunk),
        ).fetchone()
        return int(row[0]) - int(row[1])

    def pending(self, stream: str, pos: Position) -> Pending:
        """``backlog``, with the bytes and the age of what it counts."""
        lines, stored, oldest, read, read_stored = self.db.conn.execute(
            "SELECT coalesce(sum(lines), 0), coalesce(sum(coalesce(stored, bytes)), 0), "
            "min(created), coalesce(sum(CASE WHEN id=? THEN ? ELSE 0 END), 0), "
            "coalesce(sum(CASE WHEN id=? THEN coalesce(stored, bytes) * ? / lines ELSE 0 END), 0) "
            "FROM chunks WHERE stream=? AND id>=?",
            (pos.chunk, pos.line, pos.chunk, pos.line, stream, pos.chunk),
        ).fetchone()
        if int(lines) - int(read) <= 0:
            return Pending(0, 0, None)
        return Pending(int(lines) - int(read), int(stored) - int(read_stored), float(oldest))


def decode(body: bytes, codec: int) -> bytes:
    """A stored body as the lines it holds, newline-joined."""
    if codec == SEGMENT:
        return inflate(body)[:-1]
    if codec == DEFLATE:
        return inflate(body)
    return bytes(body)


def _sequence(conn: sqlite3.Connection) -> int:
    """The id a spool of an earlier version (AUTOINCREMENT) last gave out."""
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='chunks'").fetchone()
    except sqlite3.OperationalError:  # no AUTOINCREMENT table: no sqlite_sequence
        return 0
    return int(row[0]) if row else 0
