"""The aggregation stage in process on a real spool, fed tags that never repeat: the series it
holds, its checkpoint tables and the bytes the spool's budget counts for them stay bounded, and
every reading is still in an aggregate exactly once."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent.aggregate.aggregator import Aggregator
from agent.aggregate.windows import WindowTable
from agent.config import AggregationSection
from agent.parse.lineprotocol import parse_line
from agent.spool.budget import Budget
from agent.spool.chunks import decode
from agent.spool.store import Spool
from agent.status.metrics import Metrics

READINGS = 50_000
BATCH = 5_000
MAX_SERIES = 500
T0 = 1_764_000_000 * 10**9
LABEL = {"aggregation": "ids"}


def raw_lines(first: int, n: int) -> list[str]:
    """A message id as a tag: a new series for every reading, 1 ms of event time apart."""
    return [
        f"events,line=l{i % 4},msg=m{i:06d} value={i % 100} {T0 + i * 10**6}"
        for i in range(first, first + n)
    ]


async def start(path: Path) -> tuple[Spool, Aggregator, Metrics]:
    spool = Spool(path, Budget(1 << 30, 86400, 0, "drop_oldest"), "normal")
    await spool.open()
    await spool.register({"aggregator": ["raw"], "out": ["aggregates"]})
    cfg = AggregationSection(
        name="ids", every=60, lateness=1, functions=["count"], max_series=MAX_SERIES
    )
    metrics = Metrics()
    aggregator = Aggregator([cfg], spool, metrics, lambda: True)
    await aggregator.load()
    return spool, aggregator, metrics


def gauge(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name, LABEL)
    assert value is not None, name
    return value


def table_rows(path: Path) -> tuple[int, int]:
    """Rows of the checkpoint tables, read by a second connection."""
    db = sqlite3.connect(path)
    try:
        series = db.execute("SELECT count(*) FROM agg_series").fetchone()[0]
        windows = db.execute("SELECT count(*) FROM agg_windows").fetchone()[0]
    finally:
        db.close()
    return int(series), int(windows)


def aggregated(path: Path) -> int:
    """Readings counted by the aggregates in the spool; no window may be emitted twice."""
    db = sqlite3.connect(path)
    try:
        bodies = db.execute("SELECT body, codec FROM chunks WHERE stream='aggregates'").fetchall()
    finally:
        db.close()
    seen: set[str] = set()
    total = 0
    for body, codec in bodies:
        for line in decode(body, codec).decode().split("\n"):
            assert line not in seen, f"emitted twice: {line}"
            seen.add(line)
            count = parse_line(line).fields["value_count"]
            assert isinstance(count, int)
            total += count
    return total


async def wait_for(check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_tags_that_never_repeat_keep_series_rows_and_state_bytes_bounded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    spool, aggregator, metrics = await start(path)
    stop = asyncio.Event()
    task = asyncio.create_task(aggregator.run(stop))

    async def caught_up() -> bool:
        return await spool.backlog("raw", await spool.cursor("aggregator", "raw")) == 0

    for first in range(0, READINGS, BATCH):
        await spool.ingest("raw", raw_lines(first, BATCH))
        await wait_for(caught_up, 30)
        assert await spool.flush()  # the checkpoints queued so far, written
        assert gauge(metrics, "edge_aggregate_series") <= MAX_SERIES
        series_rows, window_rows = table_rows(path)
        assert series_rows <= MAX_SERIES and window_rows <= MAX_SERIES
        assert spool.state_bytes == gauge(metrics, "edge_aggregate_state_bytes")
        assert spool.state_bytes <= MAX_SERIES * 400

    held = gauge(metrics, "edge_aggregate_series")
    assert gauge(metrics, "edge_aggregate_series_evicted_total") == READINGS - held
    assert held > 0

    async def all_aggregated() -> bool:
        return aggregated(path) == READINGS  # the held series emitted once quiet (1 s)

    await wait_for(all_aggregated, 30)  # 1 s of quiet, on a loaded machine
    stop.set()
    await task
    assert await spool.flush()
    state = spool.state_bytes
    await spool.close()

    spool, _, metrics = await start(path)  # a restart restores the count the budget sees
    assert spool.state_bytes == state == gauge(metrics, "edge_aggregate_state_bytes")
    assert gauge(metrics, "edge_aggregate_series") == held
    await spool.close()


async def test_a_line_that_trips_a_bug_is_skipped_not_a_crash_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception of ours on one line used to end the aggregator, and the agent; after the
    restart its cursor stood before the same line again."""
    spool, aggregator, metrics = await start(tmp_path / "spool.db")
    add = WindowTable.add

    def buggy(self: WindowTable, head: str, *args: object) -> bool:
        if "msg=m000003" in head:
            raise ZeroDivisionError("a bug")
        return add(self, head, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(WindowTable, "add", buggy)
    stop = asyncio.Event()
    task = asyncio.create_task(aggregator.run(stop))
    await spool.ingest("raw", raw_lines(0, 10))
    deadline = time.monotonic() + 10
    while metrics.registry.get_sample_value("edge_aggregate_lines_skipped_total") != 1:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.05)
    await spool.ingest("raw", raw_lines(10, 10))
    while (await spool.cursor("aggregator", "raw")).chunk < 3:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.05)
    stop.set()
    await task
    await spool.close()
