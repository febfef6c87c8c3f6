"""The spool: the durable queue between intake and the outputs, and the one place it is written.

Its parts, one job each: the database and its disk (db.py), the chunks of each stream
(chunks.py), the consumers' cursors (cursors.py), the redelivery records (records.py), the
aggregator's checkpoints (checkpoints.py), small durable numbers (meta.py), and the budget's
policy and age clock (budget.py).

Every data write goes through one commit path (``_write``, on the spool thread): a transaction
that holds the budget's drops, the chunks of a group commit and their redelivery records, and
every side write queued since the last one: cursor moves (each consumer's latest only) and the
aggregator's checkpoints. At a steady stream the side writes ride on intake's commits, so the
spool pays one transaction and one fsync per commit, however many consumers move; the work per
commit does not grow with the rate. Without intake, side writes are written on their own after
``FLUSH_DELAY``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from agent.spool import checkpoints, meta, records
from agent.spool.budget import AgeClock, Budget, ChunkInfo, DropPlan, plan_drops
from agent.spool.checkpoints import Checkpoint, WindowRows
from agent.spool.chunks import Batch, Body, Chunks, Pending, Position, ReadResult, StreamStats
from agent.spool.cursors import Cursors, Key
from agent.spool.db import RESERVE_BYTES, Database, SpoolError, is_full
from agent.spool.deflate import Segment
from agent.spool.records import Records

__all__ = [
    "RESERVE_BYTES",
    "Batch",
    "Body",
    "Checkpoint",
    "Drop",
    "IngestResult",
    "Pending",
    "Position",
    "ReadResult",
    "Records",
    "Spool",
    "SpoolError",
    "StreamStats",
    "WindowRows",
    "wait_for_data",
]

FLUSH_DELAY = 1.0  # seconds side writes wait for an intake commit to ride on
T = TypeVar("T")


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


@dataclass(slots=True)
class _Side:
    """Side writes taken for one transaction."""

    moves: dict[Key, Position] = field(default_factory=dict)
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.moves or self.checkpoints)


@dataclass(frozen=True, slots=True)
class _Written:
    result: IngestResult
    side_written: bool
    appended: bool  # lines were added: consumers are to be woken


class Spool:
    def __init__(self, path: Path, budget: Budget, synchronous: Literal["full", "normal"]) -> None:
        self.path = path
        self.budget = budget
        self.database = Database(path, synchronous)
        self.chunks = Chunks(self.database)
        self.cursors = Cursors(self.chunks)
        self.age = AgeClock(0.0)
        self.drop_generation = 0
        # Bytes of aggregation state (agg_series, agg_windows) as its owner, the aggregator,
        # counts them: set on restore and by every checkpoint, counted by the size budget.
        self.state_bytes = 0
        self._listeners: list[asyncio.Event] = []
        self._waiting: list[tuple[str, int, asyncio.Event]] = []
        self._checkpoints: list[Checkpoint] = []
        self._side_busy = False  # one transaction at a time carries side writes, in order
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task[bool] | None = None

    # -- views -----------------------------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        return self.database.conn

    @property
    def stats(self) -> dict[str, StreamStats]:
        return self.chunks.stats

    @property
    def appended(self) -> dict[str, int]:
        return self.chunks.appended

    @property
    def read_heads(self) -> dict[Key, Position]:
        return self.cursors.read_heads

    @property
    def consumers(self) -> dict[str, set[str]]:
        return self.cursors.consumers

    def streams_like(self, prefix: str) -> list[str]:
        return self.chunks.streams_like(prefix)

    def oldest_age(self, stream: str) -> float:
        """Seconds the oldest chunk of ``stream`` has waited, on the age clock; 0 when empty."""
        oldest = self.stats.get(stream, StreamStats()).oldest
        return 0.0 if oldest is None else max(0.0, self.age.now() - oldest)

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.database.run(self._open)

    def _open(self) -> None:
        self.database.open()
        self.chunks.load()
        self.cursors.load()
        newest = self.db.execute("SELECT max(created) FROM chunks").fetchone()[0]
        self.age = AgeClock(float(newest or 0.0))

    async def probe(self) -> None:
        """Returns once the spool's thread has taken a job: the watchdog's proof that it moves."""
        await self.database.run(_nothing)

    async def close(self) -> None:
        """Write what is queued (cursors left behind would only mean lines sent again), close."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._flush_task is not None:
            await asyncio.gather(self._flush_task, return_exceptions=True)
        await self.flush()
        await self.database.run(self.database.close)
        self.database.shutdown()

    # -- meta ------------------------------------------------------------------------------------

    @property
    def clock_floor(self) -> int:
        """The newest receive stamp the spool has held: the ingest clock never goes below it."""
        return self.chunks.floor

    async def get_meta(self, key: str, default: int = 0) -> int:
        return await self.database.run(meta.get, self.database, key, default)

    async def set_meta(self, values: Mapping[str, int]) -> None:
        await self.database.run(self._drain, lambda: meta.put(self.database, values))

    async def next_connection(self) -> int:
        """A durable counter of MQTT connections, so redeliveries can be told from new sends."""
        return await self.database.run(
            self._drain, lambda: meta.increment(self.database, "mqtt_connection")
        )

    async def load_unacked(self) -> dict[int, tuple[int, bytes]]:
        return await self.database.run(records.load, self.database)

    # -- consumers -------------------------------------------------------------------------------

    async def register(self, consumers: Mapping[str, Sequence[str]]) -> list[str]:
        """Declare every consumer and its streams; returns the cursors forgotten."""
        return await self.database.run(self._drain, lambda: self.cursors.register(consumers))

    async def cursor(self, consumer: str, stream: str) -> Position:
        return self.cursors.cursor(consumer, stream)

    def advance(self, consumer: str, stream: str, pos: Position) -> None:
        """Move a consumer's cursor; written (and what every consumer has passed deleted) with
        the next transaction."""
        self.cursors.move(consumer, stream, pos)
        self._side_queued()

    async def commit_cursor(self, consumer: str, stream: str, pos: Position) -> None:
        """``advance``, written now."""
        self.advance(consumer, stream, pos)
        await self.flush()

    # -- aggregation checkpoints -----------------------------------------------------------------

    async def load_windows(self, keep: Iterable[str]) -> WindowRows:
        return await self.database.run(
            self._drain, lambda: checkpoints.load(self.database, list(keep))
        )

    def checkpoint_windows(self, checkpoint: Checkpoint) -> None:
        """Queue the aggregator's checkpoint: its lines, window state and cursor go into one
        transaction, in the order they were queued. Aggregates and state bypass the budget
        planner (they are small; the next raw commit makes room for them)."""
        self._checkpoints.append(checkpoint)
        self.cursors.positions[(checkpoint.consumer, checkpoint.source)] = checkpoint.pos
        self._side_queued()

    # -- writes ----------------------------------------------------------------------------------

    def listen(self, event: asyncio.Event) -> None:
        """Have ``event`` set after every commit that adds lines."""
        self._listeners.append(event)

    async def wait_appended(
        self, stream: str, target: int, stop: asyncio.Event, seconds: float
    ) -> bool:
        """Until ``appended[stream]`` reaches ``target`` (True), or ``stop`` is set or ``seconds``
        pass. Woken only then, not at every commit: an output filling a batch at a steady stream
        would otherwise wake for each of ten commits a second to count and sleep again."""
        if self.appended.get(stream, 0) >= target:
            return True
        entry = (stream, target, asyncio.Event())
        self._waiting.append(entry)
        try:
            await wait_for_data(entry[2], stop, seconds)
        finally:
            self._waiting.remove(entry)
        return self.appended.get(stream, 0) >= target

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
        from and the erasure of those now settled at the broker, the clock floor (the newest
        receive stamp in the raw lines), and the side writes queued. A disk that is full or gone
        read-only blocks it (nothing written, nothing
        to acknowledge), but side writes still go through: they free space."""
        bodies = {stream: body for stream, body in bodies.items() if body.lines}
        side = self._take_side()
        written = await self.database.run(self._write, bodies, records, clock_floor, side)
        self._settle(side, written)
        return written.result

    async def flush(self) -> bool:
        """Write the queued side writes now; False if the disk refused them (they stay queued)."""
        side = self._take_side()
        if not side:
            return not (self.cursors.pending or self._checkpoints)
        written = await self.database.run(self._write, {}, None, None, side)
        self._settle(side, written)
        return written.side_written

    async def oldest_chunk(self, stream: str) -> tuple[int, bytes] | None:
        return await self.database.run(self.chunks.oldest, stream)

    async def move_chunk(self, stream: str, cid: int, target: str, body: Body) -> None:
        """Replace chunk ``cid`` of ``stream`` by ``body`` appended to ``target``, atomically."""

        now = self.age.now()

        def _move() -> int:
            self.chunks.delete(stream, "id = ?", (cid,))
            if not body.lines:
                return 0
            return self.chunks.insert(target, now, body, self.chunks.encode(body))

        size = await self.database.run(self._drain, _move)
        if body.lines:
            self.chunks.appended_to(target, body.lines, size, now)
        if body.lines:
            self._notify()

    # -- reads -----------------------------------------------------------------------------------

    async def read(
        self, stream: str, start: Position, max_lines: int, max_bytes: int
    ) -> ReadResult:
        return await self.database.run(self.chunks.read, stream, start, max_lines, max_bytes)

    async def read_batch(
        self, stream: str, start: Position, max_lines: int, max_bytes: int
    ) -> Batch:
        return await self.database.run(self.chunks.read_batch, stream, start, max_lines, max_bytes)

    async def backlog(self, stream: str, pos: Position) -> int:
        """Lines in ``stream`` at or after ``pos``."""
        return await self.database.run(self.chunks.backlog, stream, pos)

    async def pending(self, stream: str, pos: Position) -> Pending:
        """Lines in ``stream`` at or after ``pos``, their stored bytes and oldest chunk."""
        return await self.database.run(self.chunks.pending, stream, pos)

    # -- the commit path (spool thread) ----------------------------------------------------------

    def _write(
        self,
        bodies: Mapping[str, Body],
        new_records: Records | None,
        floor: int | None,
        side: _Side,
    ) -> _Written:
        now = self.age.now()
        encoded = {stream: (body, self.chunks.encode(body)) for stream, body in bodies.items()}
        plan = self._plan(sum(len(s.data) for _, s in encoded.values()), now) if encoded else None
        try:
            return self._transaction(encoded, new_records, floor, side, plan, now)
        except sqlite3.Error as exc:
            self.chunks.reload_stats()
            blocked = IngestResult(False, blocked_reason=f"disk_error: {exc}")
            full = is_full(exc)
        if not full:
            return _Written(blocked, False, False)
        # The disk is full. The side writes free pages, so they may spend the reserve.
        self.database.make_room(release_reserve=bool(side))
        if not side:
            return _Written(blocked, False, False)
        try:
            written = self._transaction({}, None, None, side, None, now)
        except sqlite3.Error:
            self.chunks.reload_stats()
            return _Written(blocked, False, False)
        return _Written(blocked, True, written.appended)

    def _transaction(
        self,
        encoded: Mapping[str, tuple[Body, Segment]],
        new_records: Records | None,
        floor: int | None,
        side: _Side,
        plan: DropPlan | None,
        now: float,
    ) -> _Written:
        added: list[tuple[str, int, int]] = []
        drops: tuple[Drop, ...] = ()
        moves = dict(side.moves)
        with self.database.transaction():
            for checkpoint in side.checkpoints:
                if checkpoint.lines:
                    body = Body("\n".join(checkpoint.lines).encode(), len(checkpoint.lines))
                    size = self.chunks.insert(
                        checkpoint.target, now, body, self.chunks.encode(body)
                    )
                    added.append((checkpoint.target, body.lines, size))
                checkpoints.write(self.database, checkpoint.rows)
                moves[(checkpoint.consumer, checkpoint.source)] = checkpoint.pos
            if plan is not None:
                drops = tuple(self._drop_chunk(cid, reason) for cid, reason in plan.drop)
            if plan is None or plan.blocked_reason is None:
                for stream, (body, stored) in encoded.items():
                    stamp = floor if stream == "raw" else None
                    size = self.chunks.insert(stream, now, body, stored, stamp)
                    added.append((stream, body.lines, size))
                if new_records is not None:
                    records.write(self.database, new_records)
            self.cursors.write(moves)
        for stream, lines, size in added:
            self.chunks.appended_to(stream, lines, size, now)
        if side.checkpoints:
            self.state_bytes = side.checkpoints[-1].state_bytes
        blocked = None if plan is None else plan.blocked_reason
        return _Written(IngestResult(blocked is None, drops, blocked), True, bool(added))

    def _drain(self, write: Callable[[], T]) -> T:
        """A write outside the commit path (a meta value, a cursor registration, a held chunk
        moved), in a transaction of its own: on a full disk it may spend the reserve, as side
        writes do."""
        try:
            with self.database.transaction():
                return write()
        except sqlite3.OperationalError as exc:
            if not is_full(exc):
                raise
            self.chunks.reload_stats()
            self.database.make_room(release_reserve=True)
        with self.database.transaction():
            return write()

    def _plan(self, incoming: int, now: float) -> DropPlan:
        stats = self.stats.values()
        total = sum(s.bytes for s in stats)
        oldest = min((s.oldest for s in stats if s.oldest is not None), default=now)
        free = self.database.free_disk()
        over = (
            total + self.state_bytes + incoming > self.budget.max_size
            or now - oldest > self.budget.max_age
            or free < self.budget.min_free_disk
        )
        if not over:
            return DropPlan()
        rows = self.db.execute(
            "SELECT id, stream, created, coalesce(stored, bytes) FROM chunks ORDER BY id LIMIT 5000"
        ).fetchall()
        chunks = [ChunkInfo(int(r[0]), str(r[1]), float(r[2]), int(r[3])) for r in rows]
        return plan_drops(self.budget, chunks, total, incoming, free, now, self.state_bytes)

    def _drop_chunk(self, cid: int, reason: str) -> Drop:
        """Remove one chunk; count only the lines that some consumer had not yet passed."""
        stream = self.chunks.stream_of(cid) or "raw"
        removed = self.chunks.delete(stream, "id = ?", (cid,))
        self.drop_generation += 1
        unread = removed[0][1] if removed else 0
        low = self.cursors.slowest_reader(stream)
        if low is not None and low.chunk == cid:
            unread -= low.line
        elif low is not None and low.chunk > cid:
            unread = 0
        return Drop(stream, reason, unread)

    # -- side writes (event loop) ----------------------------------------------------------------

    def _take_side(self) -> _Side:
        if self._side_busy:
            return _Side()
        side = _Side(self.cursors.take_pending(), self._checkpoints)
        self._checkpoints = []
        self._side_busy = bool(side)
        return side

    def _settle(self, side: _Side, written: _Written) -> None:
        if side:
            self._side_busy = False
            if not written.side_written:
                self.cursors.restore_pending(side.moves)
                self._checkpoints[:0] = side.checkpoints
        if written.appended:
            self._notify()
        if self.cursors.pending or self._checkpoints:
            self._side_queued()

    def _side_queued(self) -> None:
        busy = self._flush_task is not None and not self._flush_task.done()
        if self._flush_timer is None and not busy:
            self._flush_timer = asyncio.get_running_loop().call_later(
                FLUSH_DELAY, self._start_flush
            )

    def _start_flush(self) -> None:
        self._flush_timer = None
        self._flush_task = asyncio.create_task(self.flush())

    def _notify(self) -> None:
        for event in self._listeners:
            event.set()
        for stream, target, event in self._waiting:
            if self.appended.get(stream, 0) >= target:
                event.set()


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


def _nothing() -> None:
    """The probe's job."""
