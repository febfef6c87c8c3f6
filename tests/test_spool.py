"""The spool against a real SQLite file: ordering, cursors, deletion, budgets, restarts."""

import gzip
import os
import sqlite3
from pathlib import Path

import pytest

from agent.source.redelivery import DIGEST_SIZE
from agent.spool.budget import Budget
from agent.spool.db import Transaction
from agent.spool.deflate import gzip_member
from agent.spool.store import (
    RESERVE_BYTES,
    Checkpoint,
    Position,
    Records,
    Spool,
    WindowRows,
)

BIG = Budget(max_size=1 << 30, max_age=86400, min_free_disk=0, when_full="drop_oldest")


def D(text: bytes) -> bytes:
    """A digest as the redelivery guard makes them: DIGEST_SIZE bytes."""
    return text.ljust(DIGEST_SIZE, b"_")


async def checkpoint(
    spool: Spool, pos: Position, lines: list[str], rows: WindowRows, state: int
) -> None:
    spool.checkpoint_windows(Checkpoint("aggregator", "raw", pos, "aggregates", lines, rows, state))
    assert await spool.flush()


async def open_spool(path: Path, budget: Budget = BIG) -> Spool:
    spool = Spool(path / "spool.db", budget, "full")
    await spool.open()
    await spool.register({"a": ["raw"], "b": ["raw"]})
    return spool


def lines(prefix: str, n: int) -> list[str]:
    return [f"m,t={prefix} v={i} {i}" for i in range(n)]


async def read_all(
    spool: Spool, pos: Position, max_lines: int = 1000
) -> tuple[list[bytes], Position]:
    out: list[bytes] = []
    while True:
        result = await spool.read("raw", pos, max_lines, 1 << 20)
        if not result.lines:
            return out, result.end
        out.extend(result.lines)
        pos = result.end


async def test_reads_back_in_order_across_chunks(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path)
    for k in range(5):
        assert (await spool.ingest("raw", lines(str(k), 7))).committed
    got, _ = await read_all(spool, await spool.cursor("a", "raw"), max_lines=3)
    assert got == [line.encode() for k in range(5) for line in lines(str(k), 7)]
    await spool.close()


async def test_batch_limits_by_lines_and_bytes(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path)
    await spool.ingest("raw", lines("x", 100))
    start = await spool.cursor("a", "raw")
    assert len((await spool.read("raw", start, 10, 1 << 20)).lines) == 10
    small = await spool.read("raw", start, 1000, 50)
    assert len(small.lines) == 4 and small.bytes <= 50
    await spool.close()


async def test_chunks_are_deleted_once_every_consumer_passed(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path)
    await spool.ingest("raw", lines("x", 10))
    await spool.ingest("raw", lines("y", 10))
    _, end = await read_all(spool, await spool.cursor("a", "raw"))
    await spool.commit_cursor("a", "raw", end)
    assert spool.stats["raw"].lines == 20
    await spool.commit_cursor("b", "raw", end)
    assert spool.stats["raw"].lines == 0
    await spool.close()


async def test_restart_resumes_exactly_where_it_was(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path)
    await spool.ingest("raw", lines("x", 10))
    first = await spool.read("raw", await spool.cursor("a", "raw"), 4, 1 << 20)
    await spool.commit_cursor("a", "raw", first.end)
    await spool.close()
    spool = await open_spool(tmp_path)
    rest, _ = await read_all(spool, await spool.cursor("a", "raw"))
    assert rest == [line.encode() for line in lines("x", 10)[4:]]
    assert spool.stats["raw"].lines == 10
    await spool.close()


async def test_forgotten_consumer_no_longer_pins_data(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path)
    await spool.ingest("raw", lines("x", 10))
    _, end = await read_all(spool, await spool.cursor("a", "raw"))
    await spool.commit_cursor("a", "raw", end)
    assert await spool.register({"a": ["raw"]}) == ["b/raw"]
    assert spool.stats["raw"].lines == 0
    await spool.close()


async def stored_size(tmp_path: Path) -> int:
    """What one chunk of ``lines(_, 10)`` takes in the spool (compressed): budgets count that."""
    spool = await open_spool(tmp_path / "probe")
    await spool.ingest("raw", lines("x", 10))
    size = spool.stats["raw"].bytes
    await spool.close()
    return size


async def test_chunks_are_stored_compressed(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path)
    await spool.ingest("raw", lines("x", 200))
    assert spool.stats["raw"].bytes < len("\n".join(lines("x", 200))) / 3
    await spool.close()


async def test_size_budget_drops_oldest_and_counts_unread(tmp_path: Path) -> None:
    one_chunk = await stored_size(tmp_path)
    budget = Budget(
        max_size=one_chunk * 5 // 2, max_age=86400, min_free_disk=0, when_full="drop_oldest"
    )
    spool = await open_spool(tmp_path, budget)
    await spool.ingest("raw", lines("x", 10))
    await spool.ingest("raw", lines("y", 10))
    result = await spool.ingest("raw", lines("z", 10))
    assert result.committed
    assert [(d.reason, d.lines) for d in result.drops] == [("max_size", 10)]
    got, _ = await read_all(spool, await spool.cursor("a", "raw"))
    assert got[0] == b"m,t=y v=0 0" and len(got) == 20
    await spool.close()


async def test_block_policy_refuses_without_losing(tmp_path: Path) -> None:
    one_chunk = await stored_size(tmp_path)
    budget = Budget(max_size=one_chunk * 3 // 2, max_age=86400, min_free_disk=0, when_full="block")
    spool = await open_spool(tmp_path, budget)
    assert (await spool.ingest("raw", lines("x", 10))).committed
    blocked = await spool.ingest("raw", lines("y", 10))
    assert not blocked.committed and blocked.blocked_reason == "max_size"
    got, _ = await read_all(spool, await spool.cursor("a", "raw"))
    assert len(got) == 10
    await spool.close()


async def test_unacked_records_and_meta_survive_restart(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path)
    conn = await spool.next_connection()
    await spool.ingest(
        "raw", ["m v=1 1"], records=Records(conn, 1, [(5, D(b"d5")), (6, D(b"d6"))]), clock_floor=99
    )
    await spool.ingest("raw", ["m v=2 2"], records=Records(conn, 2, [(6, D(b"e6")), (7, D(b"d7"))]))
    await spool.ingest("raw", [], records=Records(conn, 3, settled_through=1))  # 6 reused: kept
    await spool.close()
    spool = await open_spool(tmp_path)
    assert await spool.load_unacked() == {6: (conn, D(b"e6")), 7: (conn, D(b"d7"))}
    assert spool.clock_floor == 99
    assert await spool.next_connection() == conn + 1
    await spool.ingest("raw", [], records=Records(conn + 1, 1, purge_before=conn + 1))
    assert await spool.load_unacked() == {}
    await spool.close()


@pytest.mark.parametrize("n", [1, 3])
async def test_backlog_counts_lines_after_position(tmp_path: Path, n: int) -> None:
    spool = await open_spool(tmp_path)
    for _ in range(n):
        await spool.ingest("raw", lines("x", 10))
    start = await spool.cursor("a", "raw")
    assert await spool.backlog("raw", start) == 10 * n
    part = await spool.read("raw", start, 4, 1 << 20)
    assert await spool.backlog("raw", part.end) == 10 * n - 4
    await spool.close()


async def test_window_checkpoint_is_one_transaction_and_survives_a_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", BIG, "full")
    await spool.open()
    await spool.register({"aggregator": ["raw"], "out": ["aggregates", "raw"]})
    await spool.ingest("raw", lines("r", 10))
    read = await spool.read("raw", await spool.cursor("aggregator", "raw"), 100, 1 << 20)
    rows = WindowRows([("agg", "m", 59, None)], [("agg", "m", 0, "[true, false, {}]")], [])
    await checkpoint(spool, read.end, ["m v=1.0 60"], rows, 100)
    await spool.close()
    spool = Spool(tmp_path / "spool.db", BIG, "full")
    await spool.open()
    assert await spool.cursor("aggregator", "raw") == read.end
    got = await spool.read("aggregates", await spool.cursor("out", "aggregates"), 10, 1 << 20)
    assert got.lines == [b"m v=1.0 60"]
    assert await spool.load_windows(["agg"]) == rows
    rows.removed.append(("agg", "m", 0))
    await checkpoint(spool, read.end, [], rows, 50)
    assert (await spool.load_windows(["agg"])).windows == []
    evicted = WindowRows([], [("agg", "n", 0, "[true, false, {}]")], [], evicted=[("agg", "m")])
    await checkpoint(spool, read.end, [], evicted, 40)
    assert await spool.load_windows(["agg"]) == WindowRows([], evicted.windows, [])
    assert spool.state_bytes == 40
    assert await spool.load_windows(["other"]) == WindowRows([], [], [])  # changed: afresh
    await spool.close()


@pytest.mark.parametrize("policy", ["drop_oldest", "block"])
async def test_the_size_budget_counts_the_aggregation_state(tmp_path: Path, policy: str) -> None:
    """A checkpoint that grows the state makes the next raw commit drop the oldest raw chunk,
    or block, as any other data in the spool would."""
    one_chunk = await stored_size(tmp_path)
    budget = Budget(one_chunk * 7 // 2, 86400, 0, policy)  # type: ignore[arg-type]
    spool = Spool(tmp_path / "spool.db", budget, "full")
    await spool.open()
    await spool.register({"aggregator": ["raw"], "out": ["raw"]})
    await spool.ingest("raw", lines("x", 10))
    await spool.ingest("raw", lines("y", 10))
    start = await spool.cursor("aggregator", "raw")
    rows = WindowRows([("agg", "m", 1, None)], [], [])
    await checkpoint(spool, start, [], rows, one_chunk * 3 // 2)
    result = await spool.ingest("raw", lines("z", 10))
    if policy == "block":
        assert not result.committed and result.blocked_reason == "max_size"
    else:
        assert result.committed and [(d.reason, d.lines) for d in result.drops] == [
            ("max_size", 10)
        ]
        assert spool.stats["raw"].bytes + spool.state_bytes <= budget.max_size
    await spool.close()


async def test_a_spool_from_before_commit_numbers_opens_and_keeps_its_records(
    tmp_path: Path,
) -> None:
    db = sqlite3.connect(tmp_path / "spool.db")
    db.execute("CREATE TABLE unacked (mid INTEGER PRIMARY KEY, conn INTEGER, digest TEXT)")
    db.execute("INSERT INTO unacked VALUES (9, 1, ?)", (D(b"a").hex(),))
    db.commit()
    db.close()
    spool = await open_spool(tmp_path)
    assert await spool.load_unacked() == {9: (1, D(b"a"))}
    await spool.close()


def test_a_commit_that_fails_is_rolled_back_so_the_next_transaction_can_begin(
    tmp_path: Path,
) -> None:
    """A failed COMMIT (here a deferred constraint; on a gateway a full disk as the WAL grows)
    leaves SQLite's transaction open: without the rollback every later BEGIN failed for good."""
    db = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE c (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError), Transaction(db):
        db.execute("INSERT INTO c VALUES (7)")  # refused only at COMMIT
    assert not db.in_transaction
    with Transaction(db):
        db.execute("INSERT INTO p VALUES (7)")
    assert db.execute("SELECT count(*) FROM c").fetchone()[0] == 0


async def test_a_spool_keeps_a_reserve_for_drains_and_spends_it_on_a_full_disk(
    tmp_path: Path,
) -> None:
    spool = await open_spool(tmp_path)
    reserve = tmp_path / "spool.db.reserve"
    assert reserve.stat().st_size == RESERVE_BYTES
    await spool.ingest("raw", lines("x", 10))
    spool.db.execute(f"PRAGMA max_page_count={spool.db.execute('PRAGMA page_count').fetchone()[0]}")
    noise = [f"m,t={os.urandom(2000).hex()} v=1 {i}" for i in range(100)]
    full = await spool.ingest("raw", noise)  # needs new pages: none left
    assert not full.committed and "full" in (full.blocked_reason or "")
    assert reserve.exists()  # intake never spends it
    spool.database.make_room(release_reserve=True)  # what a drain does when the disk is full
    assert not reserve.exists()
    spool.database.free_disk(fresh=True)  # room again (checked every second): it comes back
    assert reserve.stat().st_size == RESERVE_BYTES
    await spool.close()


async def test_a_small_spool_with_large_pages_is_rebuilt_with_small_ones(tmp_path: Path) -> None:
    """A page is what the WAL writes per table touched: 1 KiB pages write an SD card about
    half as much per reading as SQLite's default 4 KiB."""
    db = sqlite3.connect(tmp_path / "spool.db")
    db.execute("PRAGMA page_size=4096")
    db.execute("CREATE TABLE t (x)")  # a spool of an earlier version, say
    db.commit()
    db.close()
    spool = await open_spool(tmp_path)
    await spool.ingest("raw", lines("x", 10))
    assert spool.db.execute("PRAGMA page_size").fetchone()[0] == 1024
    assert spool.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    got, _ = await read_all(spool, await spool.cursor("a", "raw"))
    assert len(got) == 10
    await spool.close()


async def test_batches_take_whole_stored_chunks_and_cut_only_where_they_must(
    tmp_path: Path,
) -> None:
    spool = await open_spool(tmp_path)
    for k in range(4):
        await spool.ingest("raw", lines(str(k), 10))
    start = await spool.cursor("a", "raw")
    whole = await spool.read_batch("raw", start, 20, 1 << 20)
    assert whole.count == 20 and len(whole.segments) == 2 and whole.full
    assert whole.lines() == [x.encode() for k in range(2) for x in lines(str(k), 10)]
    assert gzip.decompress(gzip_member(whole.segments)) == b"".join(
        x.encode() + b"\n" for k in range(2) for x in lines(str(k), 10)
    )
    filled = await spool.read_batch("raw", start, 25, 1 << 20)  # cut inside the third chunk
    assert filled.count == 25 and filled.full and filled.end == Position(start.chunk + 2, 5)
    inside = await spool.read_batch("raw", Position(whole.end.chunk, 4), 1000, 1 << 20)
    assert inside.count == 16 and inside.lines()[0] == b"m,t=2 v=4 4"
    tiny = await spool.read_batch("raw", start, 3, 1 << 20)  # one chunk is more than a batch
    assert tiny.count == 3 and tiny.end == Position(start.chunk, 3)
    assert tiny.full
    rest = await spool.read_batch("raw", tiny.end, 1000, 1 << 20)
    assert rest.count == 37 and not rest.full
    await spool.close()
