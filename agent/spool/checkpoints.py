"""The aggregator's checkpoint: its window state, written in one transaction with the aggregates
it emitted and its cursor past the readings that made them (see agent/aggregate/aggregator.py).
A crash keeps all three or none, so no reading is lost from its window or counted in it twice."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent.spool.chunks import Position
from agent.spool.db import Database


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


@dataclass(frozen=True, slots=True)
class Checkpoint:
    consumer: str
    source: str
    pos: Position
    target: str
    lines: Sequence[str]
    rows: WindowRows
    state_bytes: int  # the aggregation state once these rows are written


def load(db: Database, keep: Iterable[str]) -> WindowRows:
    """Checkpointed windows of the aggregations in ``keep`` (inside a transaction); the state of
    aggregations no longer configured, or configured differently, is deleted."""
    conn = db.conn
    wanted = json.dumps(list(keep))
    for table in ("agg_series", "agg_windows"):
        conn.execute(
            f"DELETE FROM {table} WHERE aggregation NOT IN (SELECT value FROM json_each(?))",
            (wanted,),
        )
    series = conn.execute("SELECT aggregation, series, clock, closed FROM agg_series")
    windows = conn.execute("SELECT aggregation, series, start, state FROM agg_windows")
    return WindowRows(series.fetchall(), windows.fetchall(), [])


def write(db: Database, rows: WindowRows) -> None:
    """Inside a transaction: the state rows (the caller writes the lines and the cursor)."""
    conn = db.conn
    for table in ("agg_series", "agg_windows"):
        conn.executemany(f"DELETE FROM {table} WHERE aggregation=? AND series=?", rows.evicted)
    conn.executemany("INSERT OR REPLACE INTO agg_series VALUES (?,?,?,?)", rows.series)
    conn.executemany("INSERT OR REPLACE INTO agg_windows VALUES (?,?,?,?)", rows.windows)
    conn.executemany(
        "DELETE FROM agg_windows WHERE aggregation=? AND series=? AND start=?", rows.removed
    )
