"""``edge-agent dead-letters list|replay``: what the agent set aside, and an output's refused
lines sent again once the cause is fixed.

The files (agent/deadletter.py): ``dead-letters/ingest.jsonl`` for intake, and
``dead-letters/NAME.jsonl`` for the lines output NAME's server refused, each with its rotated
``.1``.

A replay first takes the output's files aside into ``dead-letters/NAME.replaying/``, under the
lock the agent's own appends and rotation take: so it runs beside a running agent, whose next
dead letter starts a new file. It sends their lines in batches with the agent's writer and
bisection, and after each batch saves how far it got (file and offset, written whole then
renamed); a finished file is deleted. A crash, or a server that stops answering, leaves the rest
there and the next replay resumes at the saved offset: at most one batch goes out twice, and as
every line kept its timestamp the server overwrites the very same points. Lines refused again go
back into NAME.jsonl with the server's new answer (twice, at worst, after a crash between that
write and the saved offset; never lost).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from agent.config import Config, ConfigError, OutputSection, load_config
from agent.deadletter import DeadLetters, fsync_dir, line_record
from agent.forward.bisect import Answer, Refused, deliver, probe_ends
from agent.forward.classify import Action, Outcome
from agent.forward.gate import full_jitter
from agent.forward.http import Writer, encode_body
from agent.forward.probe import error_text
from agent.ops.render import CannotRun, Result, UsageError, run, when
from agent.redact import Redactor

DIR = "dead-letters"
INTAKE = "ingest"
REPLAYING = ".replaying"
MARK = "mark.json"
SAMPLES = 3
ATTEMPTS = 5  # per request, for answers that are worth a retry (5xx, 429, timeouts)
MAX_WAIT = 10.0  # seconds between two attempts, at most
PRIVATE_UMASK = 0o077


# -- reading -------------------------------------------------------------------------------------


def records(
    path: Path, offset: int = 0, whole: bool = True
) -> Iterator[tuple[dict[str, Any], int]]:
    """Each record from ``offset``, with the offset after it. ``whole``: stop at a last line
    with no newline yet (being written); else it is a record too. A line that is not a JSON
    object comes back as ``{"unreadable": text}``."""
    with path.open("rb") as fh:
        fh.seek(offset)
        for raw in fh:
            if whole and not raw.endswith(b"\n"):
                return
            offset += len(raw)
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                record = {"unreadable": raw.decode(errors="replace").rstrip("\n")}
            yield record, offset


@dataclass(frozen=True, slots=True)
class Mark:
    file: str
    offset: int


def read_mark(work: Path) -> Mark | None:
    try:
        data = json.loads((work / MARK).read_text())
        return Mark(str(data["file"]), int(data["offset"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise CannotRun(
            f"{work / MARK} is damaged ({exc}): remove it to replay from the start"
        ) from exc


def _write_mark(work: Path, mark: Mark) -> None:
    temporary = work / f"{MARK}.new"
    with temporary.open("w") as fh:
        json.dump(dataclasses.asdict(mark), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, work / MARK)
    fsync_dir(work)


def taken_files(work: Path) -> list[Path]:
    """Files a replay took aside and has not finished, oldest first."""
    return sorted(work.glob("*.jsonl"), key=lambda p: int(p.stem))


def sources(directory: Path) -> dict[str, list[tuple[Path, int]]]:
    """Each file owner's files (INTAKE, or an output's name), oldest first, with the offset its
    unreplayed records start at: those a replay took aside, the rotated one, the live one."""
    found: dict[str, list[list[tuple[Path, int]]]] = {}
    if not directory.is_dir():
        return {}
    for entry in sorted(directory.iterdir()):
        name = entry.name
        if entry.is_dir() and name.endswith(REPLAYING):
            mark = read_mark(entry)
            owner = found.setdefault(name.removesuffix(REPLAYING), [[], [], []])
            owner[0] = [
                (p, mark.offset if mark and mark.file == p.name else 0) for p in taken_files(entry)
            ]
        elif name.endswith(".jsonl.1"):
            found.setdefault(name.removesuffix(".jsonl.1"), [[], [], []])[1] = [(entry, 0)]
        elif name.endswith(".jsonl"):
            found.setdefault(name.removesuffix(".jsonl"), [[], [], []])[2] = [(entry, 0)]
    merged = {owner: [f for kind in kinds for f in kind] for owner, kinds in found.items()}
    return {owner: files for owner, files in merged.items() if files}


_QUOTED = re.compile(r"'[^']*'")
_DROPPED = re.compile(r"\s*dropped=\d+")


def reason(record: dict[str, Any]) -> str:
    """What a record is grouped by: intake's reason, or the server's answer to an output's line
    without the line it quotes."""
    if "unreadable" in record:
        return "unreadable record"
    if "status" in record:
        said = _DROPPED.sub("", _QUOTED.sub("'…'", error_text(str(record.get("error", "")))))
        return f"HTTP {record['status']}: {said}"
    return str(record.get("reason", "unknown"))


# -- list ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Group:
    reason: str
    count: int = 0
    first: float | None = None
    last: float | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] | None = None  # every record, for --json

    def add(self, record: dict[str, Any]) -> None:
        self.count += 1
        stamp = record.get("time")
        if isinstance(stamp, int | float):
            self.first = stamp if self.first is None else min(self.first, stamp)
            self.last = stamp if self.last is None else max(self.last, stamp)
        if len(self.samples) < SAMPLES:
            self.samples.append(record)
        if self.records is not None:
            self.records.append(record)


def list_main(args: argparse.Namespace) -> int:
    return run("dead-letters list", args, collect_list, text_list)


def collect_list(args: argparse.Namespace) -> Result:
    cfg = _config(args)
    directory = cfg.agent.data_dir / DIR
    try:
        found = sources(directory)
        if args.output is not None:
            found = {args.output: found.get(args.output, [])}
        listed = [_source(owner, files, args.json) for owner, files in found.items()]
    except OSError as exc:
        raise CannotRun(f"cannot read {directory}: {exc}") from exc
    total = sum(s["count"] for s in listed)
    problems = [f"{s['source']}: {s['count']} dead letters" for s in listed if s["count"]]
    result = {"ok": total == 0, "directory": str(directory), "count": total, "sources": listed}
    result["problems"] = problems
    redacted: Result = Redactor(cfg.secrets()).value(result)
    return redacted


def _source(owner: str, files: list[tuple[Path, int]], every: bool) -> dict[str, Any]:
    groups: dict[str, Group] = {}
    for path, offset in files:
        if not path.exists():
            continue  # taken by a replay since the directory was read
        for record, _ in records(path, offset):
            key = reason(record)
            group = groups.get(key)
            if group is None:
                group = groups[key] = Group(key, records=[] if every else None)
            group.add(record)
    ordered = sorted(groups.values(), key=lambda g: -g.count)
    shown = []
    for group in ordered:
        item = dataclasses.asdict(group)
        if item["records"] is None:
            del item["records"]
        shown.append(item)
    return {
        "source": "intake" if owner == INTAKE else f"output {owner}",
        "files": [str(p) for p, _ in files],
        "count": sum(g.count for g in ordered),
        "groups": shown,
    }


def text_list(result: Result) -> str:
    if not result["sources"]:
        return f"no dead letters in {result['directory']}\n"
    out = []
    for source in result["sources"]:
        out.append(f"{source['source']}: {source['count']} dead letters")
        for group in source["groups"]:
            span = f"{when(group['first'])} .. {when(group['last'])}"
            out.append(f"  {group['count']:>7}  {group['reason'][:300]}  ({span})")
            out.extend(f"           {_sample(s)}" for s in group["samples"])
    out.append(f"{result['count']} dead letters in {result['directory']}")
    return "\n".join(out) + "\n"


def _sample(record: dict[str, Any]) -> str:
    if "line" in record:
        return str(record["line"])[:200]
    if "unreadable" in record:
        return str(record["unreadable"])[:200]
    topic = record.get("topic", record.get("topic_base64", ""))
    payload = record.get("payload", record.get("payload_base64", ""))
    return f"{topic}  {str(payload)[:120]!r}  {str(record.get('error', ''))[:120]}"


# -- replay --------------------------------------------------------------------------------------


class Halted(Exception):
    """The server gives no final answer (down, credentials, permissions): stop, keep the rest."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


@dataclass(slots=True)
class Tally:
    sent: int = 0  # lines the server accepted
    refused: int = 0  # lines refused again, back in the output's dead letters
    kept: int = 0  # records that are not lines (unreadable), put back as they were
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Batch:
    lines: list[bytes] = field(default_factory=list)
    size: int = 0
    originals: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    keep: list[dict[str, Any]] = field(default_factory=list)
    end: int = 0


class Replay:
    def __init__(self, cfg: OutputSection, directory: Path) -> None:
        self.cfg = cfg
        self.directory = directory
        self.work = directory / f"{cfg.name}{REPLAYING}"
        self.live = DeadLetters(directory / f"{cfg.name}.jsonl")
        self.tally = Tally()
        self.backoff = full_jitter(MAX_WAIT, first=1.0)

    async def run(self) -> Tally:
        if not self.directory.is_dir():
            return self.tally
        self.work.mkdir(mode=0o700, exist_ok=True)
        with _exclusive(self.work, self.cfg.name):
            mark = read_mark(self.work)
            files = taken_files(self.work)
            numbers = [int(p.stem) for p in files] + ([int(Path(mark.file).stem)] if mark else [])
            files += self.live.take(self.work, max(numbers, default=0) + 1)
            connector = aiohttp.TCPConnector(limit=2)
            async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
                self.writer = Writer(self.cfg, http)
                for path in files:
                    start = mark.offset if mark is not None and mark.file == path.name else 0
                    await self._file(path, start)
                    path.unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.work / MARK).unlink()
            self.work.rmdir()
        return self.tally

    async def _file(self, path: Path, start: int) -> None:
        batch = _Batch(end=start)
        for record, end in records(path, start, whole=False):
            line = record.get("line")
            if isinstance(line, str):
                encoded = line.encode()
                batch.lines.append(encoded)
                batch.size += len(encoded) + 1
                batch.originals.setdefault(encoded, record)
            else:
                batch.keep.append(record)
            batch.end = end
            if len(batch.lines) >= self.cfg.batch_size or batch.size >= self.cfg.batch_bytes:
                await self._batch(path, batch)
                batch = _Batch(end=end)
        if batch.lines or batch.keep:
            await self._batch(path, batch)

    async def _batch(self, path: Path, batch: _Batch) -> None:
        refused: Refused = []
        if batch.lines:
            answer = await self._answer(batch.lines, whole=len(batch.lines) > 1)
            await deliver(batch.lines, self._part, refused, self._accepted, answer)
        again = [self._again(line, outcome, batch.originals[line]) for line, outcome in refused]
        await asyncio.to_thread(self.live.write, again + batch.keep)
        await asyncio.to_thread(_write_mark, self.work, Mark(path.name, batch.end))
        self.tally.refused += len(again)
        self.tally.kept += len(batch.keep)
        for record in again:
            key = reason(record)
            self.tally.reasons[key] = self.tally.reasons.get(key, 0) + 1

    def _accepted(self, count: int) -> None:
        self.tally.sent += count

    async def _part(self, lines: list[bytes]) -> Answer:
        return await self._answer(lines, whole=False)

    async def _answer(self, lines: list[bytes], whole: bool) -> Answer:
        """As the output does (``_post_until_answer``), with a few attempts instead of forever:
        a person waits for this."""
        level = self.cfg.gzip_level
        outcome = await self._final(await encode_body(lines, level))
        ends = None
        if outcome.action is Action.BISECT and whole:
            ends = await probe_ends(lines, outcome, self.writer.post, level)
            if ends.request_level:
                raise Halted(dataclasses.replace(outcome, action=Action.CONFIG))
        return outcome, ends

    async def _final(self, body: bytes) -> Outcome:
        attempt = 1
        while True:
            outcome = await self.writer.post(body)
            if outcome.action in (Action.SUCCESS, Action.SPLIT, Action.BISECT):
                return outcome
            if outcome.action is Action.CONFIG or attempt == ATTEMPTS:
                raise Halted(outcome)
            wait = outcome.retry_after
            await asyncio.sleep(min(MAX_WAIT, self.backoff(attempt) if wait is None else wait))
            attempt += 1

    @staticmethod
    def _again(line: bytes, outcome: Outcome, original: dict[str, Any]) -> dict[str, Any]:
        record = line_record(
            line.decode(errors="replace"), outcome.status or 0, outcome.message[:1000]
        )
        record["first_time"] = original.get("first_time", original.get("time"))
        record["replays"] = int(original.get("replays", 0)) + 1
        return record


@contextlib.contextmanager
def _exclusive(work: Path, name: str) -> Iterator[None]:
    """Only one replay of an output at a time. The one before may have just removed its
    finished work dir: then it was running a moment ago."""
    running = CannotRun(f"another replay of output {name!r} is running")
    try:
        fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise running from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise running from None
        if os.fstat(fd).st_nlink == 0:  # removed by the one that held the lock until now
            raise running
        yield
    finally:
        os.close(fd)


def replay_main(args: argparse.Namespace) -> int:
    return run("dead-letters replay", args, collect_replay, text_replay)


def collect_replay(args: argparse.Namespace) -> Result:
    cfg = _config(args)
    output = next((o for o in cfg.outputs if o.name == args.output), None)
    if output is None:
        names = ", ".join(o.name for o in cfg.outputs)
        raise UsageError(f"no output named {args.output!r} in {args.config} (there are: {names})")
    directory = cfg.agent.data_dir / DIR
    redactor = Redactor(cfg.secrets())
    _as_owner(directory)
    replay = Replay(output, directory)
    try:
        tally = asyncio.run(replay.run())
    except Halted as exc:
        said = error_text(exc.outcome.message)
        status = f"HTTP {exc.outcome.status}: " if exc.outcome.status else ""
        sent = replay.tally.sent
        raise CannotRun(
            redactor.text(
                f"output {output.name!r} gave no final answer ({status}{said}); {sent} lines "
                f"sent, the rest kept for the next replay (edge-agent doctor may say why)"
            )
        ) from exc
    except OSError as exc:
        raise CannotRun(f"{directory}: {exc}") from exc
    result = {
        "ok": tally.refused == 0,
        "output": output.name,
        "sent": tally.sent,
        "refused": tally.refused,
        "kept": tally.kept,
        "reasons": tally.reasons,
        "dead_letters": str(replay.live.path),
        "problems": [f"refused again ({n}): {r}" for r, n in tally.reasons.items()],
    }
    redacted: Result = redactor.value(result)
    return redacted


def _as_owner(directory: Path) -> None:
    """Files the replay creates (its work files, a new dead-letter file) belong to the agent's
    user, as if the agent had made them: run as root, it acts as the data dir's owner."""
    os.umask(PRIVATE_UMASK)
    with contextlib.suppress(FileNotFoundError):
        owner = directory.stat()
        if os.geteuid() == 0 and owner.st_uid != 0:
            os.setegid(owner.st_gid)
            os.seteuid(owner.st_uid)


def text_replay(result: Result) -> str:
    out = [f"output {result['output']}: {result['sent']} lines sent again"]
    if result["refused"]:
        out.append(f"{result['refused']} refused again, still in {result['dead_letters']}:")
        out.extend(f"  {n:>7}  {r[:300]}" for r, n in result["reasons"].items())
    if result["kept"]:
        out.append(f"{result['kept']} records that are not lines kept as they were")
    return "\n".join(out) + "\n"


def _config(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
