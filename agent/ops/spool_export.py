"""``edge-agent spool export``: an output's backlog as line protocol on stdout.

For the site that is offline for weeks: the backlog goes onto a USB stick and into the cloud by
hand. Every stored line keeps the timestamp it got at ingest, so an export imported twice, or
imported and then sent by the agent once its link is back, writes the very same points, which
InfluxDB overwrites: the cloud holds each reading once.

The lines go to stdout as they are read, a few chunks at a time, never the whole backlog in
memory; the summary goes to stderr (``--json``: as JSON). The export reads the spool like
``status`` does, beside a running agent or without one, and moves nothing. ``--advance`` then
moves the output's cursors past what it wrote, so the agent does not send it again: only with
the agent stopped (the export holds the data dir's lock meanwhile), and not with ``--since`` or
``--until``, since lines left out by the filter would be skipped unsent.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import stat
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from agent.config import Config, OutputSection, load_config
from agent.ops import render, running
from agent.ops.readonly import Reader, require, start_of
from agent.ops.render import CannotRun, Result, UsageError
from agent.ops.times import line_time, parse_time
from agent.spool.chunks import Position


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    config_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser(
        "export",
        help="an output's backlog as line protocol on stdout (the cursor does not move)",
    )
    config_arg(p)
    render.add_json_arg(p, "print the summary as one JSON object on stderr (stdout has the lines)")
    p.add_argument(
        "--output", required=True, metavar="NAME", help="the [[outputs]] name whose backlog"
    )
    p.add_argument(
        "--since",
        metavar="T",
        help="only lines stamped at or after T: RFC 3339 with a zone, or a duration back "
        "from now such as 2h",
    )
    p.add_argument("--until", metavar="T", help="only lines stamped before T (same forms)")
    p.add_argument(
        "--advance",
        action="store_true",
        help="then move the output's cursor past the lines written, so the agent does not send "
        "them; the agent must be stopped; not with --since/--until",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """The lines own stdout; the summary goes to stderr."""
    try:
        return render.run("spool export", args, collect, text, out=sys.stderr)
    finally:
        _quiet_stdout()


@dataclass(frozen=True, slots=True)
class Window:
    since: int | None = None  # ns, inclusive
    until: int | None = None  # ns, exclusive

    def holds(self, stamp: int) -> bool:
        return (self.since is None or stamp >= self.since) and (
            self.until is None or stamp < self.until
        )

    @property
    def open(self) -> bool:
        return self.since is None and self.until is None


@dataclass(slots=True)
class Counts:
    lines: int = 0
    bytes: int = 0
    filtered_out: int = 0
    without_timestamp: int = 0
    damaged: list[str] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        self.lines += other.lines
        self.bytes += other.bytes
        self.filtered_out += other.filtered_out
        self.without_timestamp += other.without_timestamp
        self.damaged += other.damaged


def collect(args: argparse.Namespace) -> Result:
    cfg = load_config(args.config)
    window = window_of(args.since, args.until, time.time_ns())
    output = next((o for o in cfg.outputs if o.name == args.output), None)
    if output is None:
        names = ", ".join(o.name for o in cfg.outputs)
        raise UsageError(f"no output named {args.output!r} in {args.config} (outputs: {names})")
    if args.advance and not window.open:
        raise UsageError(
            "--advance moves the cursor past every line read, so with --since/--until the lines "
            "left out would be skipped unsent: export without a filter to advance"
        )
    return export(cfg, output, window, args.advance, sys.stdout.buffer)


def window_of(since: str | None, until: str | None, now_ns: int) -> Window:
    window = Window(
        None if since is None else parse_time(since, now_ns),
        None if until is None else parse_time(until, now_ns),
    )
    if window.since is not None and window.until is not None and window.since >= window.until:
        raise UsageError(f"--since {since} is not before --until {until}: nothing to export")
    return window


def export(
    cfg: Config, output: OutputSection, window: Window, advance: bool, sink: BinaryIO
) -> Result:
    data_dir = cfg.agent.data_dir
    path = data_dir / "spool.db"
    with contextlib.ExitStack() as held:
        if advance:
            require(path)  # before the lock, which would create agent.lock
            held.enter_context(_data_dir_lock(data_dir))
        pid = None if advance else running.lock_holder(data_dir)
        spool = held.enter_context(Reader(path))
        plan = _plan(spool, output)
        streams: dict[str, Any] = {}
        totals = Counts()
        for stream, (start, end) in plan.items():
            counts = Counts()
            if end is not None:
                _write(_lines(spool, stream, start, end, counts), window, sink, counts)
            streams[stream] = {
                "from": {"chunk": start.chunk, "line": start.line},
                "through_chunk": end,
                "lines": counts.lines,
                "bytes": counts.bytes,
                "filtered_out": counts.filtered_out,
                "without_timestamp": counts.without_timestamp,
            }
            totals.add(counts)
        problems = [f"{d}: its lines are not in the export" for d in totals.damaged]
        if totals.without_timestamp:
            problems.append(
                f"{totals.without_timestamp} lines without a timestamp were left out (they "
                "cannot be imported exactly once); run 'edge-agent spool check'"
            )
        _settle(sink, fsync=advance)
        moved = advance and not problems and _advance(path, output.name, plan)
    return {
        "ok": not problems,
        "command": "spool export",
        "output": output.name,
        "agent_running": pid is not None,
        "since_ns": window.since,
        "until_ns": window.until,
        "lines": totals.lines,
        "bytes": totals.bytes,
        "filtered_out": totals.filtered_out,
        "streams": streams,
        "advanced": moved,
        "problems": problems,
    }


def _plan(spool: Reader, output: OutputSection) -> dict[str, tuple[Position, int | None]]:
    """For each stream the output sends: where its cursor stands and the last chunk to export
    (the newest now: lines committed while the export runs wait for the next one)."""
    with spool.snapshot():
        cursors = spool.cursors()
        ranges = spool.streams()
        last_id = spool.last_id()
    plan: dict[str, tuple[Position, int | None]] = {}
    for stream in output.streams:
        span = ranges.get(stream)
        start = cursors.get((output.name, stream)) or start_of(span, last_id)
        plan[stream] = (start, None if span is None or span.last < start.chunk else span.last)
    return plan


def _lines(
    spool: Reader, stream: str, start: Position, end: int, counts: Counts
) -> Iterator[list[bytes]]:
    """Each chunk's lines from ``start`` through chunk ``end``; a chunk that does not decode is
    noted and passed over, so one damaged chunk does not keep the rest off the stick."""
    for chunk in spool.chunks(stream, start.chunk, end):
        try:
            lines = chunk.text().split(b"\n")
        except zlib.error as exc:
            counts.damaged.append(
                f"chunk {chunk.id} ({stream}, {chunk.lines} lines) is damaged ({exc})"
            )
            continue
        yield lines[start.line :] if chunk.id == start.chunk else lines


def _write(chunks: Iterator[list[bytes]], window: Window, sink: IO[bytes], counts: Counts) -> None:
    for lines in chunks:
        kept = []
        for line in lines:
            stamp = line_time(line)
            if stamp is None:
                counts.without_timestamp += 1
            elif window.holds(stamp):
                kept.append(line)
            else:
                counts.filtered_out += 1
        if not kept:
            continue
        data = b"\n".join(kept) + b"\n"
        try:
            sink.write(data)
        except BrokenPipeError:
            raise CannotRun(
                f"stdout was closed after {counts.lines} lines: the export is incomplete "
                "(no cursor moved)"
            ) from None
        counts.lines += len(kept)
        counts.bytes += len(data)


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """The agent's own lock: taken, no agent can start while cursors move; refused, one runs."""
    from agent.daemon import DataDirLocked, lock_data_dir

    try:
        handle = lock_data_dir(data_dir)
    except DataDirLocked:
        raise CannotRun(
            "--advance needs the agent stopped (it holds the data dir): stop it "
            "(systemctl stop edge-agent), export with --advance, start it again"
        ) from None
    try:
        yield
    finally:
        handle.close()


def _settle(sink: BinaryIO, fsync: bool) -> None:
    """The lines out of this process (a reader gone away is found here, not after the summary
    says all went well) and, before a cursor moves, on disk if stdout is a file (a pipe has
    taken them; what it does with them is up to the other end)."""
    try:
        sink.flush()
        if fsync and stat.S_ISREG(os.fstat(sink.fileno()).st_mode):
            os.fsync(sink.fileno())
    except OSError as exc:
        raise CannotRun(f"writing the export failed ({exc}): no cursor moved") from exc


def _advance(path: Path, consumer: str, plan: dict[str, tuple[Position, int | None]]) -> bool:
    moves = {stream: Position(end + 1, 0) for stream, (_, end) in plan.items() if end is not None}
    if not moves:
        return False
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    except sqlite3.Error as exc:
        raise CannotRun(f"cannot open {path} to move the cursor: {exc}") from exc
    try:
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        for stream, pos in moves.items():
            db.execute(
                "INSERT INTO cursors(consumer, stream, chunk, line) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(consumer, stream) DO UPDATE SET chunk=excluded.chunk, line=0",
                (consumer, stream, pos.chunk, pos.line),
            )
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise CannotRun(f"moving the cursor failed ({exc}): it stays where it was") from exc
    finally:
        db.close()
    return True


def _quiet_stdout() -> None:
    """A reader that went away (``| head``) leaves stdout broken: point it at /dev/null so the
    interpreter's last flush does not print a traceback over the summary."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def text(result: Result) -> str:
    streams = ", ".join(
        f"{name} {s['lines']} lines from chunk {s['from']['chunk']} line {s['from']['line']}"
        for name, s in result["streams"].items()
    )
    out = [
        f"exported {result['lines']} lines ({render.size(result['bytes'])}) of output "
        f"{result['output']!r}: {streams}\n"
    ]
    if result["filtered_out"]:
        out.append(f"{result['filtered_out']} lines outside --since/--until were left out\n")
    if result["advanced"]:
        out.append("the output's cursor moved past these lines: the agent will not send them\n")
    else:
        out.append(
            "the output's cursor did not move: the agent still sends these lines once its link "
            "is back (same timestamps: the server keeps each point once). To skip them instead, "
            "stop the agent and export again with --advance\n"
        )
    if result["agent_running"]:
        out.append(
            "the agent was running: lines it sent meanwhile may be missing here (they were "
            "delivered)\n"
        )
    out.append(render.problems_text(result))
    return "".join(out)
