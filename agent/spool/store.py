"""The durable queue: an SQLite database of chunks of line protocol, one cursor per consumer.

A chunk is what one group commit wrote to one stream: many lines in one row, so the per-reading
cost of durability is a memcpy, not a B-tree insert. A consumer's position is (chunk id, line
index); chunk ids only grow (AUTOINCREMENT), so a position stays meaningful after the chunks
before it are deleted or dropped. A chunk's ``created`` is read on the spool's age clock
(budget.py), which wall-clock steps cannot move. Every method runs on one dedicated thread that
owns the connection, keeping disk waits off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from agent.spool.budget import AgeClock, Budget, ChunkInfo, DropPlan, plan_drops

T = TypeVar("T")
# Disk the spool keeps aside for drains (see _drain_write): enough WAL for thousands of cursor
# moves and deletions, small beside any sensible spool budget.
RESERVE_BYTES = 2 * 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    created REAL NOT NULL,
    lines INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_stream ON chunks (stream, id);
CREATE TABLE IF NOT EXISTS cursors (
    consumer TEXT NOT NULL,
    stream TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    line INTEGER NOT NULL,
    PRIMARY KEY (consumer, stream)
);
CREATE TABLE IF NOT EXISTS unacked (
    mid INTEGER PRIMARY KEY,
    conn INTEGER NOT NULL,
    digest TEXT NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS agg_series (
    aggregation TEXT NOT NULL,
    series TEXT NOT NULL,
    clock INTEGER NOT NULL,
    closed INTEGER,
    PRIMARY KEY (aggregation, series)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agg_windows (
    aggregation TEXT NOT NULL,
    series TEXT NOT NULL,
    start INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (aggregation, series, start)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """The next line a consumer will read: line ``line`` of the first chunk with id >= ``chunk``."""

    chunk: int
    line: int


@dataclass(slots=True)
class StreamStats:
    lines: int = 0
    bytes: int = 0
    oldest: float | None = None


@dataclass(frozen=True, slots=True)
class Drop:
    stream: str
    reason: str
    lines: int


@dataclass(frozen=True, slots=True)
class IngestResult:
    committed: bool
    drops: tuple[Drop, ...] = ()
    blocked_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Body:
    """Lines as one chunk body: newline-joined bytes and how many lines they are."""

    data: bytes
    lines: int


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Lines read from a position; ``end`` is where the consumer stands once they are delivered."""

    lines: list[bytes]
    end: Position
    bytes: int


@dataclass(frozen=True, slots=True)
class Records:
    """The redelivery bookkeeping that rides on a group commit (see source/redelivery.py)."""

    connection: int
    commit: int  # stamped on the new records: a barrier settles them by this number
    new: Sequence[tuple[int, bytes]] = ()  # (packet id, digest) of the messages acknowledged
    settled_through: int | None = None  # erase the connection's records up to this commit
    purge_before: int | None = None  # erase every record of earlier connections


@dataclass(slots=True)
class WindowRows:
    """Aggregation state rows, each led by its aggregation's identity: series clocks
    (series, clock, closed), window states (series, start, state), windows removed
    (series, start) and series evicted, whose clock and windows all go (series)."""

    series: list[tuple[str, str, int, int | None]]
    windows: list[tuple[str, str, int, str]]
    removed: list[tuple[str, str, int]]
    evicted: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.series or self.windows or self.removed or self.evicted)


class SpoolError(Exception):
    """The spool could not be opened or is unusable (not a transient disk-full)."""


class Spool:
    def __init__(self, path: Path, budget: Budget, synchronous: Literal["full", "normal"]) -> None:
        self.path = path
        self.budget = budget
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._db: sqlite3.Connection | None = None
        self.stats: dict[str, StreamStats] = {}
        self.consumers: dict[str, set[str]] = {}
        self._min_cursor: dict[str, Position] = {}
        self.appended: dict[str, int] = {}
        # Where each consumer has read up to (in memory, ahead of its durable cursor while
        # batches are in flight): a dropped line it has already read is not a lost one.
        self.read_heads: dict[tuple[str, str], Position] = {}
        self.drop_generation = 0
        self._listeners: list[asyncio.Event] = []
        self.age = AgeClock(0.0)
        self._reserve = path.with_name(path.name + ".reserve")
        # Bytes of aggregation state (agg_series, agg_windows) as its owner, the aggregator,
        # counts them: set on restore and by every checkpoint, counted by the size budget.
        self.state_bytes = 0

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            db.execute("PRAGMA journal_size_limit=67108864")
            db.execute("PRAGMA cache_size=-512")  # 512 KiB: an edge box has little memory
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(unacked)")}
            if "seq" not in columns:  # a spool written before records carried their commit
                db.execute("ALTER TABLE unacked ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        if check != "ok":
            raise SpoolError(f"spool {self.path} failed its integrity check: {check}")
        self._db = db
        newest = db.execute("SELECT max(created) FROM chunks").fetchone()[0]
        self.age = AgeClock(float(newest or 0.0))
        self._reload_stats()
        self._free_disk()

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.close()
                self._db = None

        await self._run(_close)
        self._executor.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError("spool is not open")
        return self._db

    # -- meta ------------------------------------------------------------------------------------

    async def get_meta(self, key: str, default: int = 0) -> int:
        def _get() -> int:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            return int(row[0]) if row else default

        return await self._run(_get)

    async def set_meta(self, values: Mapping[str, int]) -> None:
        def _set() -> None:
            with _transaction(self.db):
                self.db.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    list(values.items()),
                )

        await self._run(self._drain_write, _set)

    async def next_connection(self) -> int:
        """A durable counter of MQTT connections, so redeliveries can be told from new sends."""

        def _next() -> int:
            db = self.db
            with _transaction(db):
                db.execute(
                    "INSERT INTO meta(key, value) VALUES('mqtt_connection', 1) "
                    "ON CONFLICT(key) DO UPDATE SET value = value + 1"
                )
                row = db.execute("SELECT value FROM meta WHERE key='mqtt_connection'").fetchone()
            return int(row[0])

        return await self._run(_next)

    async def load_unacked(self) -> dict[int, tuple[int, bytes]]:
        def _load() -> dict[int, tuple[int, bytes]]:
            rows = self.db.execute("SELECT mid, conn, digest FROM unacked")
            return {mid: (conn, bytes.fromhex(digest)) for mid, conn, digest in rows}

        return await self._run(_load)

    # -- consumers -------------------------------------------------------------------------------

    async def register(self, consumers: Mapping[str, Sequence[str]]) -> list[str]:
        """Declare every consumer and its streams; forget cursors of consumers no longer
        configured (otherwise their stale cursor would pin the spool forever). Returns those."""

        def _register() -> list[str]:
            db = self.db
            forgotten: list[str] = []
            with _transaction(db):
                wanted = {(c, s) for c, streams in consumers.items() for s in streams}
                for consumer, stream in db.execute(
                    "SELECT consumer, stream FROM cursors"
                ).fetchall():
                    if (consumer, stream) not in wanted:
                        db.execute(
                            "DELETE FROM cursors WHERE consumer=? AND stream=?", (consumer, stream)
                        )
                        forgotten.append(f"{consumer}/{stream}")
                for consumer, stream in sorted(wanted):
                    first = db.execute(
                        "SELECT min(id) FROM chunks WHERE stream=?", (stream,)
                    ).fetchone()[0]
                    start = first if first is not None else self._next_chunk_id()
                    db.execute(
                        "INSERT OR IGNORE INTO cursors(consumer, stream, chunk, line) "
                        "VALUES (?, ?, ?, 0)",
                        (consumer, stream, start),
                    )
                self.consumers = {}
                for consumer, stream in wanted:
                    self.consumers.setdefault(stream, set()).add(consumer)
                for stream in self.consumers:
                    self._refresh_min_cursor(stream)
                    self._delete_consumed(stream)
            return forgotten

        return await self._run(_register)

    def _next_chunk_id(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='chunks'").fetchone()
        return int(row[0]) + 1 if row else 1

    async def cursor(self, consumer: str, stream: str) -> Position:
        def _get() -> Position:
            row = self.db.execute(
                "SELECT chunk, line FROM cursors WHERE consumer=? AND stream=?", (consumer, stream)
            ).fetchone()
            if row is None:
                raise SpoolError(f"consumer {consumer!r} is not registered for {stream!r}")
            return Position(int(row[0]), int(row[1]))

        return await self._run(_get)

    async def commit_cursor(self, consumer: str, stream: str, pos: Position) -> None:
        """Advance a consumer durably and delete what every consumer of the stream has passed."""

        def _commit() -> None:
            with _transaction(self.db):
                self._advance_cursor(consumer, stream, pos)

        await self._run(self._drain_write, _commit)

    def _advance_cursor(self, consumer: str, stream: str, pos: Position) -> None:
        self.db.execute(
            "UPDATE cursors SET chunk=?, line=? WHERE consumer=? AND stream=?",
            (pos.chunk, pos.line, consumer, stream),
        )
        self._refresh_min_cursor(stream)
        self._delete_consumed(stream)

    def _refresh_min_cursor(self, stream: str) -> None:
        row = self.db.execute(
            "SELECT chunk, line FROM cursors WHERE stream=? ORDER BY chunk, line LIMIT 1", (stream,)
        ).fetchone()
        if row is not None:
            self._min_cursor[stream] = Position(int(row[0]), int(row[1]))

    def _delete_consumed(self, stream: str) -> None:
        low = self._min_cursor.get(stream)
        if low is None:
            return
        self._delete_where(stream, "id < ?", (low.chunk,))

    def _delete_where(
        self, stream: str, where: str, args: tuple[object, ...]
    ) -> list[tuple[int, int]]:
        rows = self.db.execute(
            f"SELECT id, lines, bytes FROM chunks WHERE stream=? AND {where}", (stream, *args)
        ).fetchall()
        if not rows:
            return []
        self.db.execute(f"DELETE FROM chunks WHERE stream=? AND {where}", (stream, *args))
        stats = self.stats.setdefault(stream, StreamStats())
        stats.lines -= sum(r[1] for r in rows)
        stats.bytes -= sum(r[2] for r in rows)
        first = self.db.execute(
            "SELECT created FROM chunks WHERE stream=? ORDER BY id LIMIT 1", (stream,)
        ).fetchone()
        stats.oldest = float(first[0]) if first else None
        return [(int(r[0]), int(r[1])) for r in rows]

    # -- ingest ----------------------------------------------------------------------------------

    def listen(self, event: asyncio.Event) -> None:
        """Have ``event`` set after every commit that adds lines."""
        self._listeners.append(event)

    async def ingest(
        self,
        stream: str,
        lines: Sequence[str],
        *,
        records: Records | None = None,
        clock_floor: int | None = None,
    ) -> IngestResult:
        """``commit`` of one stream's lines."""
        body = Body("\n".join(lines).encode(), len(lines))
        return await self.commit({stream: body}, records=records, clock_floor=clock_floor)

    async def commit(
        self,
        bodies: Mapping[str, Body],
        *,
        records: Records | None = None,
        clock_floor: int | None = None,
    ) -> IngestResult:
        """One group commit: a chunk per stream, the redelivery records of the messages they came
        from and the erasure of those now settled at the broker, and the clock floor. A disk that
        is full or gone read-only blocks it (nothing written, nothing to acknowledge)."""
        bodies = {stream: body for stream, body in bodies.items() if body.lines}
        result = await self._run(self._commit, bodies, records, clock_floor)
        if result.committed and bodies:
            self._notify()
        return result

    def _notify(self) -> None:
        for event in self._listeners:
            event.set()

    def _insert_chunk(self, stream: str, now: float, lines: int, body: bytes) -> None:
        self.db.execute(
            "INSERT INTO chunks(stream, created, lines, bytes, body) VALUES (?,?,?,?,?)",
            (stream, now, lines, len(body), body),
        )

    def _commit(
        self, bodies: Mapping[str, Body], records: Records | None, clock_floor: int | None
    ) -> IngestResult:
        db = self.db
        now = self.age.now()
        plan = self._plan(sum(len(b.data) for b in bodies.values()), now)
        try:
            with _transaction(db):
                drops = tuple(self._drop_chunk(cid, reason) for cid, reason in plan.drop)
                if plan.blocked_reason is not None:
                    return IngestResult(False, drops, plan.blocked_reason)
                for stream, body in bodies.items():
                    self._insert_chunk(stream, now, body.lines, body.data)
                if records is not None:
                    self._write_records(records)
                if clock_floor is not None:
                    db.execute(
                        "INSERT INTO meta(key, value) VALUES('clock_floor', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (clock_floor,),
                    )
        except sqlite3.Error as exc:
            if _is_full(exc):
                self._make_room(release_reserve=False)
            self._reload_stats()
            return IngestResult(False, blocked_reason=f"disk_error: {exc}")
        for stream, body in bodies.items():
            self._count_appended(stream, body.lines, len(body.data), now)
        return IngestResult(True, drops)

    # -- held streams (agent/clock/hold.py) ------------------------------------------------------

    def streams_like(self, prefix: str) -> list[str]:
        """Streams with data whose name starts with ``prefix`` (in-memory stats: no query)."""
        return sorted(s for s, st in self.stats.items() if s.startswith(prefix) and st.lines)

    async def oldest_chunk(self, stream: str) -> tuple[int, bytes] | None:
        def _oldest() -> tuple[int, bytes] | None:
            row = self.db.execute(
                "SELECT id, body FROM chunks WHERE stream=? ORDER BY id LIMIT 1", (stream,)
            ).fetchone()
            return None if row is None else (int(row[0]), bytes(row[1]))

        return await self._run(_oldest)

    async def move_chunk(self, stream: str, cid: int, target: str, body: Body) -> None:
        """Replace chunk ``cid`` of ``stream`` by ``body`` appended to ``target``, atomically."""

        def _move() -> None:
            now = self.age.now()
            with _transaction(self.db):
                self._delete_where(stream, "id = ?", (cid,))
                if body.lines:
                    self._insert_chunk(target, now, body.lines, body.data)
            if body.lines:
                self._count_appended(target, body.lines, len(body.data), now)

        await self._run(self._drain_write, _move)
        if body.lines:
            self._notify()

    def _write_records(self, records: Records) -> None:
        db = self.db
        if records.purge_before is not None:
            db.execute("DELETE FROM unacked WHERE conn < ?", (records.purge_before,))
        if records.settled_through is not None:
            db.execute(
                "DELETE FROM unacked WHERE conn = ? AND seq <= ?",
                (records.connection, records.settled_through),
            )
        if records.new:
            # One statement, rows unpacked by SQLite from JSON: executemany would drop and retake
            # the GIL for every row, which the MQTT thread makes slow.
            db.execute(
                "INSERT OR REPLACE INTO unacked(mid, conn, digest, seq) "
                "SELECT json_extract(value, '$[0]'), ?, json_extract(value, '$[1]'), ? "
                "FROM json_each(?)",
                (
                    records.connection,
                    records.commit,
                    json.dumps([(mid, d.hex()) for mid, d in records.new]),
                ),
            )

    def oldest_age(self, stream: str) -> float:
        """Seconds the oldest chunk of ``stream`` has waited, on the age clock; 0 when empty."""
        oldest = self.stats.get(stream, StreamStats()).oldest
        return 0.0 if oldest is None else max(0.0, self.age.now() - oldest)

    def _plan(self, incoming: int, now: float) -> DropPlan:
        total = sum(s.bytes for s in self.stats.values())
        state = self.state_bytes
        oldest = min((s.oldest for s in self.stats.values() if s.oldest is not None), default=now)
        free = self._free_disk()
        over = (
            total + state + incoming > self.budget.max_size
            or now - oldest > self.budget.max_age
            or free < self.budget.min_free_disk
        )
        if not over:
            return DropPlan()
        rows = self.db.execute(
            "SELECT id, stream, created, bytes FROM chunks ORDER BY id LIMIT 5000"
        ).fetchall()
        chunks = [ChunkInfo(int(r[0]), str(r[1]), float(r[2]), int(r[3])) for r in rows]
        return plan_drops(self.budget, chunks, total, incoming, free, now, state)

    def _free_disk(self) -> int:
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return 0
        self._keep_reserve(free)
        return free

    def _drop_chunk(self, cid: int, reason: str) -> Drop:
        """Remove one chunk; count only the lines that some consumer had not yet passed."""
        row = self.db.execute("SELECT stream FROM chunks WHERE id=?", (cid,)).fetchone()
        stream = str(row[0]) if row else "raw"
        removed = self._delete_where(stream, "id = ?", (cid,))
        self.drop_generation += 1
        unread = removed[0][1] if removed else 0
        low = self._slowest_reader(stream)
        if low is not None and low.chunk == cid:
            unread -= low.line
        elif low is not None and low.chunk > cid:
            unread = 0
        return Drop(stream, reason, unread)

    def _slowest_reader(self, stream: str) -> Position | None:
        heads = [self.read_heads.get((c, stream)) for c in self.consumers.get(stream, ())]
        known = [h for h in heads if h is not None]
        if not known or len(known) < len(heads):
            return self._min_cursor.get(stream)
        return min(known)

    # -- a full disk ---------------------------------------------------------------------------

    def _drain_write(self, write: Callable[[], T]) -> T:
        """A write that frees or hands on data (a cursor, a checkpoint, a move). On a full disk
        it may spend the reserve: otherwise outputs that deliver could never advance their
        cursors, the spool never free a page, and intake stay blocked until someone cleans up."""
        try:
            return write()
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            self._make_room(release_reserve=True)
            return write()

    def _make_room(self, release_reserve: bool) -> None:
        """Give back the WAL's disk space (all of it is in the database once checkpointed) and,
        for a drain, the reserve file. Intake reuses the pages that drains free."""
        if release_reserve:
            self._reserve.unlink(missing_ok=True)
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            return

    def _keep_reserve(self, free: int) -> None:
        """(Re)create the reserve once the disk has room for it again."""
        if free < 4 * RESERVE_BYTES or self._reserve.exists():
            return
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError:
            self._reserve.unlink(missing_ok=True)

    def _reload_stats(self) -> None:
        self.stats = {}
        for stream, lines, size, oldest in self.db.execute(
            "SELECT stream, sum(lines), sum(bytes), min(created) FROM chunks GROUP BY stream"
        ):
            self.stats[stream] = StreamStats(lines, size, oldest)

    # -- aggregation checkpoints -----------------------------------------------------------------

    async def load_windows(self, keep: Iterable[str]) -> WindowRows:
        """Checkpointed windows of the aggregations in ``keep``; the state of aggregations no
        longer configured (or configured differently) is deleted."""

        def _load() -> WindowRows:
            db = self.db
            wanted = json.dumps(list(keep))
            with _transaction(db):
                for table in ("agg_series", "agg_windows"):
                    db.execute(
                        f"DELETE FROM {table} "
                        "WHERE aggregation NOT IN (SELECT value FROM json_each(?))",
                        (wanted,),
                    )
            series = db.execute("SELECT aggregation, series, clock, closed FROM agg_series")
            windows = db.execute("SELECT aggregation, series, start, state FROM agg_windows")
            return WindowRows(series.fetchall(), windows.fetchall(), [])

        return await self._run(_load)

    async def checkpoint_windows(
        self,
        consumer: str,
        source: str,
        pos: Position,
        target: str,
        lines: Sequence[str],
        rows: WindowRows,
        state_bytes: int,
    ) -> None:
        """One transaction: the aggregate lines emitted, the window state, and the aggregator's
        cursor past the readings that made them. A crash keeps all three or none, so no reading
        is lost from its window or counted in it twice. ``state_bytes`` is the aggregation
        state once these rows are written. Aggregates and state are small and bypass the budget
        planner (the next raw commit makes room for them)."""
        body = "\n".join(lines).encode()
        now = self.age.now()

        def _checkpoint() -> None:
            db = self.db
            with _transaction(db):
                if lines:
                    self._insert_chunk(target, now, len(lines), body)
                for table in ("agg_series", "agg_windows"):
                    db.executemany(
                        f"DELETE FROM {table} WHERE aggregation=? AND series=?", rows.evicted
                    )
                db.executemany("INSERT OR REPLACE INTO agg_series VALUES (?,?,?,?)", rows.series)
                db.executemany("INSERT OR REPLACE INTO agg_windows VALUES (?,?,?,?)", rows.windows)
                db.executemany(
                    "DELETE FROM agg_windows WHERE aggregation=? AND series=? AND start=?",
                    rows.removed,
                )
                self._advance_cursor(consumer, source, pos)
            self.state_bytes = state_bytes
            if lines:
                self._count_appended(target, len(lines), len(body), now)

        await self._run(self._drain_write, _checkpoint)
        if lines:
            self._notify()

    def _count_appended(self, stream: str, lines: int, size: int, now: float) -> None:
        self.appended[stream] = self.appended.get(stream, 0) + lines
        stats = self.stats.setdefault(stream, StreamStats())
        stats.lines += lines
        stats.bytes += size
        if stats.oldest is None:
            stats.oldest = now

    # -- read ------------------------------------------------------------------------------------

    async def read(
        self, stream: str, start: Position, max_lines: int, max_bytes: int
    ) -> ReadResult:
        return await self._run(self._read, stream, start, max_lines, max_bytes)

    def _read(self, stream: str, start: Position, max_lines: int, max_bytes: int) -> ReadResult:
        out: list[bytes] = []
        size = 0
        pos = start
        while len(out) < max_lines and size < max_bytes:
            # A few chunks per query: bodies are loaded whole, and a backlog of large chunks
            # fetched at once would cost tens of MB.
            rows = self.db.execute(
                "SELECT id, lines, body FROM chunks WHERE stream=? AND id>=? ORDER BY id LIMIT 8",
                (stream, pos.chunk),
            ).fetchall()
            if not rows:
                break
            for cid, nlines, body in rows:
                first = pos.line if cid == pos.chunk else 0
                chunk_lines = bytes(body).split(b"\n")
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

    async def backlog(self, stream: str, pos: Position) -> int:
        """Lines in ``stream`` at or after ``pos``."""

        def _count() -> int:
            row = self.db.execute(
                "SELECT coalesce(sum(lines), 0), "
                "coalesce(sum(CASE WHEN id=? THEN ? ELSE 0 END), 0) "
                "FROM chunks WHERE stream=? AND id>=?",
                (pos.chunk, pos.line, stream, pos.chunk),
            ).fetchone()
            return int(row[0]) - int(row[1])

        return await self._run(_count)


async def wait_for_data(event: asyncio.Event, stop: asyncio.Event, seconds: float) -> bool:
    """Wait until a ``listen`` event is set, ``stop`` is set or ``seconds`` pass; False on
    the timeout."""
    waiter = asyncio.ensure_future(event.wait())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait(
            (waiter, stopper), timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()
        stopper.cancel()
    return bool(done)


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error:
                # A COMMIT that fails (a full disk as the WAL grows) leaves the transaction open;
                # without the rollback every later BEGIN would fail and the spool stay wedged.
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
