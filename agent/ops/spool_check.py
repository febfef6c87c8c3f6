"""``edge-agent spool check``: is the spool whole, are its cursors sane, does its budget add up.

Read-only, beside a running agent or without one. Four checks:

- integrity: SQLite's ``PRAGMA quick_check``;
- chunks: every body decodes, holds the lines its row says, matches its stored CRC-32 and size,
  and every line carries a timestamp (held lines: their clock mark);
- cursors: each within its stream's range of chunk ids, none past the newest chunk ever
  written, each configured consumer has one;
- budget: the bytes each chunk counts toward ``max_size`` are the bytes its body holds, and the
  total is within ``max_size``.

A problem is something wrong (exit 1); a note is something an operator may want to know that
the agent handles by itself (lines dropped by the budget, a cursor it forgets at its next
start).
"""

from __future__ import annotations

import argparse
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.clock.hold import BOOT_STAMPED, OWN_STAMP
from agent.clock.hold import PREFIX as HELD
from agent.config import Config, load_config
from agent.ops import render, running
from agent.ops.readonly import Chunk, Reader, StreamRange
from agent.ops.render import Result
from agent.ops.times import line_time
from agent.spool.chunks import DEFLATE, PLAIN, SEGMENT, Position

INTEGRITY_SECONDS = 300.0  # quick_check reads the whole file
SHOWN = 20  # problems listed per check; the rest are counted


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    config_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser(
        "check", help="integrity, cursors and budget of the spool (read-only, agent running or not)"
    )
    config_arg(p)
    render.add_json_arg(p)
    p.set_defaults(handler=lambda args: render.run("spool check", args, collect, text))


@dataclass(slots=True)
class Check:
    name: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    hidden: int = 0  # problems beyond SHOWN, counted only

    def problem(self, message: str) -> None:
        if len(self.problems) < SHOWN:
            self.problems.append(message)
        else:
            self.hidden += 1

    def as_dict(self) -> Result:
        problems = list(self.problems)
        if self.hidden:
            problems.append(f"... and {self.hidden} more like these")
        return {
            "name": self.name,
            "ok": not problems,
            "problems": problems,
            "notes": self.notes,
            **self.figures,
        }


def collect(args: argparse.Namespace) -> Result:
    return gather(load_config(args.config))


def gather(cfg: Config) -> Result:
    data_dir = cfg.agent.data_dir
    pid = running.lock_holder(data_dir)
    with Reader(data_dir / "spool.db") as spool:
        checks = [
            integrity(spool),
            chunks(spool.chunks(None, 0)),
            cursors(spool, consumers_of(cfg), pid is not None),
            budget(spool, cfg.spool.max_size),
        ]
    found = [c.as_dict() for c in checks]
    problems = [f"{c['name']}: {p}" for c in found for p in c["problems"]]
    return {
        "ok": not problems,
        "command": "spool check",
        "spool": str(data_dir / "spool.db"),
        "agent_running": pid is not None,
        "checks": found,
        "problems": problems,
    }


def consumers_of(cfg: Config) -> dict[str, list[str]]:
    """Every consumer the agent registers with this config, and the streams it reads."""
    from agent.aggregate.aggregator import CONSUMER, SOURCE  # the aggregator's imports are heavy

    wanted: dict[str, list[str]] = {o.name: list(o.streams) for o in cfg.outputs}
    if cfg.aggregations:
        wanted[CONSUMER] = [SOURCE]
    return wanted


def integrity(spool: Reader) -> Check:
    check = Check("integrity")
    rows = spool.rows(f"PRAGMA quick_check({SHOWN})", seconds=INTEGRITY_SECONDS)
    messages = [str(r[0]) for r in rows]
    if messages != ["ok"]:
        for message in messages:
            check.problem(f"sqlite quick_check: {message}")
    return check


def chunks(stored: Iterable[Chunk]) -> Check:
    check = Check("chunks")
    count = lines = size = 0
    for chunk in stored:
        count += 1
        text = _verified_text(chunk, check)
        if text is None:
            continue
        found = text.split(b"\n")
        lines += len(found)
        size += len(text) + 1
        if len(found) != chunk.lines:
            check.problem(f"{_name(chunk)} holds {len(found)} lines, its row says {chunk.lines}")
        for number, line in enumerate(found):
            bad = _bad_line(chunk.stream, line)
            if bad:
                check.problem(f"{_name(chunk)} line {number}: {bad}: {line[:120]!r}")
    check.figures = {"chunks": count, "lines": lines, "line_bytes": size}
    return check


def _name(chunk: Chunk) -> str:
    return f"chunk {chunk.id} ({chunk.stream})"


def _verified_text(chunk: Chunk, check: Check) -> bytes | None:
    """The chunk's lines (newline-joined), or None once a problem with its body is noted."""
    if chunk.codec not in (PLAIN, DEFLATE, SEGMENT):
        check.problem(f"{_name(chunk)}: unknown codec {chunk.codec}")
        return None
    try:
        text = chunk.text()
    except zlib.error as exc:
        check.problem(f"{_name(chunk)}: body does not decode ({exc})")
        return None
    if chunk.codec != SEGMENT:
        return text
    whole = text + b"\n"
    if chunk.crc is None:
        check.problem(f"{_name(chunk)}: no CRC stored, the body cannot be verified")
    elif zlib.crc32(whole) != chunk.crc:
        check.problem(
            f"{_name(chunk)}: CRC-32 of its lines is {zlib.crc32(whole):#010x}, "
            f"stored {chunk.crc:#010x}: the body is damaged"
        )
        return None
    if len(whole) != chunk.size:
        check.problem(
            f"{_name(chunk)}: holds {len(whole)} bytes of lines, its row says {chunk.size}"
        )
    return text


def _bad_line(stream: str, line: bytes) -> str | None:
    if stream.startswith(HELD):
        if not line.startswith((BOOT_STAMPED, OWN_STAMP)):
            return "held line without its clock mark"
        line = line[len(BOOT_STAMPED) :]  # both marks are two bytes
    if line_time(line) is None:
        return "no timestamp"
    return None


def cursors(spool: Reader, wanted: Mapping[str, list[str]], agent_running: bool) -> Check:
    check = Check("cursors")
    with spool.snapshot():
        positions = spool.cursors()
        ranges = spool.streams()
        last_id = spool.last_id()
        lines_at = {
            (stream, pos.chunk): spool.chunk_lines(pos.chunk, stream)
            for (_, stream), pos in positions.items()
        }
    problems, notes = cursor_findings(positions, ranges, last_id, lines_at, wanted, agent_running)
    for message in problems:
        check.problem(message)
    check.notes = notes
    check.figures = {
        "last_chunk": last_id,
        "cursors": {
            f"{c}/{s}": {"chunk": p.chunk, "line": p.line}
            for (c, s), p in sorted(positions.items())
        },
    }
    return check


def cursor_findings(
    positions: Mapping[tuple[str, str], Position],
    ranges: Mapping[str, StreamRange],
    last_id: int,
    lines_at: Mapping[tuple[str, int], int | None],
    wanted: Mapping[str, list[str]],
    agent_running: bool,
) -> tuple[list[str], list[str]]:
    """(problems, notes) about the cursors, from one consistent view of the spool.
    ``lines_at``: the line count of the chunk each cursor points into, None if gone."""
    problems: list[str] = []
    notes: list[str] = []
    for (consumer, stream), pos in sorted(positions.items()):
        name = f"cursor {consumer}/{stream}"
        if pos.chunk < 1 or pos.line < 0:
            problems.append(f"{name} at chunk {pos.chunk} line {pos.line} is not a position")
            continue
        if pos.chunk > last_id + 1:
            problems.append(
                f"{name} points to chunk {pos.chunk}, past the newest chunk ever written "
                f"({last_id}): the next {pos.chunk - last_id - 1} chunks written would be skipped"
            )
            continue
        held = lines_at.get((stream, pos.chunk))
        if held is not None and pos.line > held:
            problems.append(
                f"{name} points to line {pos.line} of chunk {pos.chunk}, which holds {held} lines"
            )
        span = ranges.get(stream)
        if span is not None and pos.chunk < span.first:
            notes.append(
                f"{name} is behind the stream's oldest chunk ({pos.chunk} < {span.first}): "
                "lines it had not read were dropped by the spool's budget"
            )
        if stream not in wanted.get(consumer, []):
            notes.append(
                f"{name} belongs to no configured consumer: the agent forgets it at its next start"
            )
    for consumer, streams in sorted(wanted.items()):
        for stream in streams:
            if (consumer, stream) in positions:
                continue
            if agent_running:
                problems.append(
                    f"cursor {consumer}/{stream} is missing while the agent runs: "
                    "its progress is not being saved"
                )
            else:
                notes.append(
                    f"cursor {consumer}/{stream} does not exist yet: the agent starts it at the "
                    "stream's oldest chunk"
                )
    read = {stream for _, stream in positions} | {s for v in wanted.values() for s in v}
    for stream, span in sorted(ranges.items()):
        if stream.startswith(HELD):
            continue
        if stream not in read:
            notes.append(
                f"stream {stream} holds {span.lines} lines that no consumer reads: they stay "
                "until the budget drops them"
            )
            continue
        slowest = min((p for (_, s), p in positions.items() if s == stream), default=None)
        if slowest is not None and span.first < slowest.chunk:
            notes.append(
                f"stream {stream} keeps chunks from {span.first} that every cursor has passed "
                f"(the slowest is at {slowest.chunk}): the agent deletes them with its next "
                "commit or start"
            )
    return problems, notes


def budget(spool: Reader, max_size: int) -> Check:
    check = Check("budget")
    count, counted, actual, wrong = spool.rows(
        "SELECT count(*), coalesce(sum(coalesce(stored, bytes)), 0), "
        "coalesce(sum(CASE WHEN stored IS NULL THEN bytes ELSE length(body) END), 0), "
        "coalesce(sum(stored IS NOT NULL AND stored != length(body)), 0) FROM chunks"
    )[0]
    if wrong:
        ids = [
            r[0]
            for r in spool.rows(
                "SELECT id FROM chunks WHERE stored IS NOT NULL AND stored != length(body) "
                f"ORDER BY id LIMIT {SHOWN}"
            )
        ]
        check.problem(
            f"{wrong} chunks count other sizes toward the budget than their bodies hold "
            f"(chunks {ids}): the budget counts {counted} bytes, the bodies hold {actual}"
        )
    if counted > max_size:
        check.problem(
            f"the chunks hold {render.size(counted)}, over max_size = {render.size(max_size)}: "
            "the agent drops (when_full = drop_oldest) or refuses (block) at its next commit"
        )
    check.figures = {
        "chunks": count,
        "counted_bytes": counted,
        "actual_bytes": actual,
        "max_size": max_size,
    }
    return check


def text(result: Result) -> str:
    running_note = " (agent running)" if result["agent_running"] else ""
    out = [f"spool {result['spool']}{running_note}\n"]
    for check in result["checks"]:
        mark = "ok" if check["ok"] else "FAILED"
        out.append(f"  {check['name']:<10} {mark}{_summary(check)}\n")
        out.extend(f"    - {p}\n" for p in check["problems"])
        out.extend(f"    note: {n}\n" for n in check["notes"])
    out.append(render.problems_text(result))
    return "".join(out)


def _summary(check: Result) -> str:
    if check["name"] == "chunks":
        return f": {check['chunks']} chunks, {check['lines']} lines"
    if check["name"] == "budget":
        return f": {render.size(check['counted_bytes'])} of {render.size(check['max_size'])}"
    if check["name"] == "cursors":
        return f": {len(check['cursors'])} cursors"
    return ""
