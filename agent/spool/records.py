"""The redelivery records that ride on each group commit (see agent/source/redelivery.py).

One row per commit (its packet ids and digests packed), not one per message: a commit of a
thousand messages writes one row of about 14 KB instead of a thousand B-tree entries, and a
barrier erases a second of commits with one range delete. A packet id recorded again (a matched
redelivery, or an id the broker reused) is found in several rows; the newest wins at load. When
a barrier erases the newer row, an older connection's row for the same id stays a candidate
until the first new message of a connection purges every older row, as unmatched candidates do:
the broker cannot have reused the id before sending that new message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.source.redelivery import DIGEST_SIZE
from agent.spool.db import Database, ack_key, pack_records


@dataclass(frozen=True, slots=True)
class Records:
    connection: int
    commit: int  # stamped on the new records: a barrier settles them by this number
    new: Sequence[tuple[int, bytes]] = ()  # (packet id, digest) of the messages acknowledged
    settled_through: int | None = None  # erase the connection's records up to this commit
    purge_before: int | None = None  # erase every record of earlier connections


def write(db: Database, records: Records) -> None:
    """Inside the commit's transaction. A packet id the broker has reused since (its PUBACK was
    processed) appears in a later commit's row too; the later one wins at load."""
    conn = db.conn
    if records.purge_before is not None:
        conn.execute("DELETE FROM acks WHERE key < ?", (ack_key(records.purge_before, 0),))
    if records.settled_through is not None:
        conn.execute(
            "DELETE FROM acks WHERE key BETWEEN ? AND ?",
            (ack_key(records.connection, 0), ack_key(records.connection, records.settled_through)),
        )
    if records.new:
        conn.execute(
            "INSERT OR REPLACE INTO acks VALUES (?, ?, ?)",
            (ack_key(records.connection, records.commit), *pack_records(list(records.new))),
        )


def load(db: Database) -> dict[int, tuple[int, bytes]]:
    """Every record: packet id -> (connection, digest), the newest commit's for each id."""
    out: dict[int, tuple[int, bytes]] = {}
    rows = db.conn.execute("SELECT key >> 32, mids, digests FROM acks ORDER BY key")
    for conn, mids, digests in rows:
        for i in range(len(mids) // 2):
            mid = int.from_bytes(mids[2 * i : 2 * i + 2], "little")
            out[mid] = (int(conn), bytes(digests[DIGEST_SIZE * i : DIGEST_SIZE * (i + 1)]))
    return out
