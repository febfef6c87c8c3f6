"""Where each consumer stands in each stream it reads.

Three positions per (consumer, stream): the read head (in memory: how far it has read, ahead of
its cursor while batches are in flight), the cursor it has moved to (in memory, once its batches
succeeded), and the durable cursor (in the spool). Moves are written with the next transaction,
whoever makes it, and only the latest move of a consumer is written: a cursor left behind by a
crash only means lines sent again, which the server upserts. So moving a cursor costs no
transaction, no fsync and no page of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.spool.chunks import Chunks, Position
from agent.spool.db import SpoolError

Key = tuple[str, str]  # (consumer, stream)


class Cursors:
    def __init__(self, chunks: Chunks) -> None:
        self.chunks = chunks
        self.consumers: dict[str, set[str]] = {}  # stream -> its consumers
        self.read_heads: dict[Key, Position] = {}
        self.positions: dict[Key, Position] = {}  # moved to, durable or not yet
        self.pending: dict[Key, Position] = {}  # moves not yet written
        self._min: dict[str, Position] = {}  # the slowest durable cursor of each stream

    def load(self) -> None:
        """At open: every durable cursor, registered or not yet."""
        for consumer, stream, chunk, line in self.chunks.db.conn.execute("SELECT * FROM cursors"):
            self.positions[(consumer, stream)] = Position(int(chunk), int(line))

    def register(self, consumers: Mapping[str, Sequence[str]]) -> list[str]:
        """Declare every consumer and its streams (inside a transaction); forget cursors of
        consumers no longer configured, whose stale cursors would pin the spool forever."""
        conn = self.chunks.db.conn
        forgotten: list[str] = []
        wanted = {(c, s) for c, streams in consumers.items() for s in streams}
        for consumer, stream in conn.execute("SELECT consumer, stream FROM cursors").fetchall():
            if (consumer, stream) not in wanted:
                conn.execute(
                    "DELETE FROM cursors WHERE consumer=? AND stream=?", (consumer, stream)
                )
                forgotten.append(f"{consumer}/{stream}")
        for consumer, stream in sorted(wanted):
            first = conn.execute("SELECT min(id) FROM chunks WHERE stream=?", (stream,)).fetchone()[
                0
            ]
            start = first if first is not None else self.chunks.last_id + 1
            conn.execute(
                "INSERT OR IGNORE INTO cursors(consumer, stream, chunk, line) VALUES (?, ?, ?, 0)",
                (consumer, stream, start),
            )
        self.consumers = {}
        for consumer, stream in wanted:
            self.consumers.setdefault(stream, set()).add(consumer)
        self.positions = {}
        self.load()
        for stream in self.consumers:
            self._refresh_min(stream)
            self._delete_consumed(stream)
        return forgotten

    def cursor(self, consumer: str, stream: str) -> Position:
        try:
            return self.positions[(consumer, stream)]
        except KeyError:
            raise SpoolError(f"consumer {consumer!r} is not registered for {stream!r}") from None

    def move(self, consumer: str, stream: str, pos: Position) -> None:
        self.positions[(consumer, stream)] = pos
        self.pending[(consumer, stream)] = pos

    def take_pending(self) -> dict[Key, Position]:
        pending, self.pending = self.pending, {}
        return pending

    def restore_pending(self, moves: dict[Key, Position]) -> None:
        """Moves whose transaction failed: written with the next one, unless moved on since."""
        for key, pos in moves.items():
            self.pending.setdefault(key, pos)

    def write(self, moves: Mapping[Key, Position]) -> None:
        """Inside a transaction: the moves, and the chunks every consumer has now passed."""
        conn = self.chunks.db.conn
        for (consumer, stream), pos in moves.items():
            conn.execute(
                "UPDATE cursors SET chunk=?, line=? WHERE consumer=? AND stream=?",
                (pos.chunk, pos.line, consumer, stream),
            )
        for stream in {stream for _, stream in moves}:
            self._refresh_min(stream)
            self._delete_consumed(stream)

    def slowest_reader(self, stream: str) -> Position | None:
        """Where the slowest consumer of ``stream`` has read to: a line it has read (and so
        sends or has sent) is not lost when its chunk is dropped."""
        heads = [self.read_heads.get((c, stream)) for c in self.consumers.get(stream, ())]
        known = [h for h in heads if h is not None]
        if not known or len(known) < len(heads):
            return self._min.get(stream)
        return min(known)

    def _refresh_min(self, stream: str) -> None:
        row = self.chunks.db.conn.execute(
            "SELECT chunk, line FROM cursors WHERE stream=? ORDER BY chunk, line LIMIT 1",
            (stream,),
        ).fetchone()
        if row is not None:
            self._min[stream] = Position(int(row[0]), int(row[1]))

    def _delete_consumed(self, stream: str) -> None:
        low = self._min.get(stream)
        if low is not None:
            self.chunks.delete(stream, "id < ?", (low.chunk,))
