"""Small durable numbers the agent keeps beside its data: the MQTT connection counter, the ingest
clock's floor, the clock's last confirmation. Integers only."""

from __future__ import annotations

from collections.abc import Mapping

from agent.spool.db import Database

_UPSERT = (
    "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value"
)


def get(db: Database, key: str, default: int = 0) -> int:
    row = db.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return int(row[0]) if row else default


def put(db: Database, values: Mapping[str, int]) -> None:
    """Inside a transaction."""
    db.conn.executemany(_UPSERT, list(values.items()))


def increment(db: Database, key: str) -> int:
    """Inside a transaction: the key's value plus one, stored and returned."""
    db.conn.execute(
        "INSERT INTO meta(key, value) VALUES(?, 1) ON CONFLICT(key) DO UPDATE SET value=value + 1",
        (key,),
    )
    return get(db, key)
