"""The spool's SQLite database: one connection owned by one thread, its schema, and how it stays
writable on a full disk.

Every statement runs on the spool thread (``run``), keeping disk waits off the event loop. WAL
with ``synchronous=FULL`` by default: a transaction is on disk once its COMMIT returns.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

T = TypeVar("T")
# Disk kept aside for drains (cursor moves, checkpoints): enough WAL for thousands of them, small
# beside any sensible spool budget.
RESERVE_BYTES = 2 * 1024 * 1024
FREE_DISK_EVERY = 1.0  # seconds a free-disk reading is reused: statvfs per commit adds up
PAGE_SIZE = 1024
REBUILD_BELOW = 64 * 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    created REAL NOT NULL,
    lines INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    body BLOB NOT NULL,
    codec INTEGER NOT NULL DEFAULT 0,
    stored INTEGER,
    stamp INTEGER,
    crc INTEGER
);
CREATE TABLE IF NOT EXISTS cursors (
    consumer TEXT NOT NULL,
    stream TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    line INTEGER NOT NULL,
    PRIMARY KEY (consumer, stream)
);
CREATE TABLE IF NOT EXISTS acks (
    key INTEGER PRIMARY KEY,
    mids BLOB NOT NULL,
    digests BLOB NOT NULL
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


class SpoolError(Exception):
    """The spool could not be opened or is unusable (not a transient disk-full)."""


def is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


class Database:
    def __init__(self, path: Path, synchronous: Literal["full", "normal"]) -> None:
        self.path = path
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._conn: sqlite3.Connection | None = None
        self._reserve = path.with_name(path.name + ".reserve")
        self._free = (0, -FREE_DISK_EVERY)  # (bytes, when read)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError("spool is not open")
        return self._conn

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            _small_pages(db)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            db.execute("PRAGMA journal_size_limit=67108864")
            db.execute("PRAGMA cache_size=-512")  # 512 KiB: an edge box has little memory
            # Debian's SQLite overwrites every freed page with zeros: a page written per chunk
            # deleted. FAST zeroes only what is written anyway; the files are 0600 regardless.
            db.execute("PRAGMA secure_delete=FAST")
            db.executescript(SCHEMA)
            _migrate(db)
            check = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        if check != "ok":
            raise SpoolError(f"spool {self.path} failed its integrity check: {check}")
        self._conn = db
        self.free_disk(fresh=True)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)

    def transaction(self) -> Transaction:
        return Transaction(self.conn)

    # -- the disk ------------------------------------------------------------------------------

    def free_disk(self, fresh: bool = False) -> int:
        """Free bytes on the data disk, read at most once a second; keeps the reserve."""
        free, when = self._free
        now = time.monotonic()
        if fresh or now - when >= FREE_DISK_EVERY:
            try:
                free = shutil.disk_usage(self.path.parent).free
            except OSError:
                free = 0
            self._free = (free, now)
            self._keep_reserve(free)
        return free

    def make_room(self, release_reserve: bool) -> None:
        """Give back the WAL's disk space (all of it is in the database once checkpointed) and,
        for a drain, the reserve file. Intake reuses the pages that drains free."""
        if release_reserve:
            self._reserve.unlink(missing_ok=True)
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            return
        finally:
            self._free = (0, -FREE_DISK_EVERY)

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


def _small_pages(db: sqlite3.Connection) -> None:
    """1 KiB pages. A commit adds about a kilobyte of rows to each of two tables, and the WAL
    writes whole pages: with SQLite's default 4 KiB, an SD card is written about twice as much
    per reading (measured: 3.2x the line bytes at 100 readings a commit, 1.5x with 1 KiB). A
    spool made with larger pages is rebuilt while it is small; a big backlog waits for later."""
    if db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE:
        return
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    if pages == 0:
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        return
    size = pages * db.execute("PRAGMA page_size").fetchone()[0]
    if size <= REBUILD_BELOW:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute("VACUUM")


def _migrate(db: sqlite3.Connection) -> None:
    """Spools written by earlier versions: chunks without codec and stored size, redelivery
    records one row per message."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(chunks)")}
    if "codec" not in columns:
        db.execute("ALTER TABLE chunks ADD COLUMN codec INTEGER NOT NULL DEFAULT 0")
        db.execute("ALTER TABLE chunks ADD COLUMN stored INTEGER")
        db.execute("ALTER TABLE chunks ADD COLUMN stamp INTEGER")
    if "crc" not in columns:
        db.execute("ALTER TABLE chunks ADD COLUMN crc INTEGER")
    db.execute("DROP INDEX IF EXISTS chunks_by_stream")  # one page less written per commit
    old = db.execute("SELECT name FROM sqlite_master WHERE name='unacked'").fetchone()
    if old is None:
        return
    columns = {row[1] for row in db.execute("PRAGMA table_info(unacked)")}
    seq = "seq" if "seq" in columns else "0"
    rows = db.execute(f"SELECT mid, conn, digest, {seq} AS n FROM unacked ORDER BY conn, n")
    groups: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
    for mid, conn, digest, commit in rows:
        groups.setdefault((int(conn), int(commit)), []).append((int(mid), bytes.fromhex(digest)))
    with Transaction(db):
        for (conn, commit), records in groups.items():
            db.execute(
                "INSERT OR REPLACE INTO acks VALUES (?, ?, ?)",
                (ack_key(conn, commit), *pack_records(records)),
            )
        db.execute("DROP TABLE unacked")


def ack_key(connection: int, commit: int) -> int:
    """One integer for (connection, commit): the table then keeps rows up to 4 KB in its leaf
    pages (a composite key would push a commit's records to overflow pages) and a barrier's or
    a purge's erasure is a range of keys."""
    return connection << 32 | commit


def pack_records(records: list[tuple[int, bytes]]) -> tuple[bytes, bytes]:
    """(packet ids as uint16, digests concatenated): one row per commit, not per message."""
    mids = b"".join(mid.to_bytes(2, "little") for mid, _ in records)
    return mids, b"".join(digest for _, digest in records)


class Transaction:
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
