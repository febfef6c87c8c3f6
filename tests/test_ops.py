"""Operator commands without a running agent: the pure parts (times, timestamps, rendering, lock
and health reading, cursor findings) and the commands against a real spool file written by the
agent's own Spool class. tests/test_ops_e2e.py runs them beside a real agent."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import io
import json
import os
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import cli
from agent.config import load_config
from agent.daemon import lock_data_dir
from agent.ops import render, running, spool_check, spool_export, status
from agent.ops.readonly import StreamRange
from agent.ops.render import CannotRun, UsageError
from agent.ops.running import Live, Sample
from agent.ops.spool_export import Window
from agent.ops.times import NS, line_time, parse_time
from agent.parse.lineprotocol import encode_line
from agent.spool.budget import Budget
from agent.spool.chunks import Position
from agent.spool.deflate import Compressor
from agent.spool.store import Spool
from agent.tools.localservers import free_port

T0 = 1_714_543_200 * NS  # 2024-05-01T06:00:00Z


# --- times --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T06:00:00Z", T0),
        ("2024-05-01t06:00:00z", T0),
        ("2024-05-01 06:00:00Z", T0),
        ("2024-05-01T08:00:00+02:00", T0),
        ("2024-05-01T01:30:00-04:30", T0),
        ("2024-05-01T06:00:00.5Z", T0 + 500_000_000),
        ("2024-05-01T06:00:00.000000001Z", T0 + 1),
        ("2024-05-01T06:00:00.123456789+00:00", T0 + 123_456_789),
        ("1969-12-31T23:59:59Z", -NS),
    ],
)
def test_rfc3339_is_read_to_the_nanosecond(text: str, expected: int) -> None:
    assert parse_time(text, now_ns=0) == expected


@pytest.mark.parametrize(
    ("text", "back"),
    [("2h", 7200 * NS), ("1d12h", 36 * 3600 * NS), ("90m", 5400 * NS), ("500ms", NS // 2)],
)
def test_a_duration_counts_back_from_now(text: str, back: int) -> None:
    assert parse_time(text, now_ns=T0) == T0 - back


@pytest.mark.parametrize(
    "text",
    ["2024-05-01T06:00:00", "2024-05-01", "2024-13-01T00:00:00Z", "yesterday", "", "3600", "-2h"],
)
def test_unreadable_times_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="time"):
        parse_time(text, now_ns=T0)


@given(st.integers(min_value=-(2**62), max_value=2**62))
def test_rfc3339_round_trips_every_nanosecond(ns: int) -> None:
    seconds, fraction = divmod(ns, NS)
    text = render.when(seconds).removesuffix("Z") + f".{fraction:09d}Z"
    assert parse_time(text, now_ns=0) == ns


@pytest.mark.parametrize(
    ("line", "stamp"),
    [
        (b"m,t=a v=1 1700000000000000000", 1_700_000_000_000_000_000),
        (b"m v=1i -5", -5),
        (b"m v=1", None),
        (b"m v=1 ", None),
        (b'm s="a 123"', None),
        (b'm s="a 123",x=1', None),
        (b"m,t=a\\ 5 v=1", None),
        (b"m f\\ 12=5", None),
        (b"m v=1 12x", None),
        (b"12345", None),
        (b"", None),
    ],
)
def test_line_time(line: bytes, stamp: int | None) -> None:
    assert line_time(line) == stamp


_names = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=1)


@given(
    measurement=_names.filter(lambda s: not s.startswith("#")),
    tags=st.dictionaries(_names, _names, max_size=3),
    fields=st.dictionaries(
        _names,
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
            st.booleans(),
            _names,
        ),
        min_size=1,
        max_size=3,
    ),
    ts=st.integers(-(2**63), 2**63 - 1),
)
def test_line_time_of_every_encoded_line(
    measurement: str, tags: dict[str, str], fields: dict[str, Any], ts: int
) -> None:
    """The stamp is found after any escaping the encoder does; without one, none is found."""
    line = encode_line(measurement, tags, fields, ts).encode()
    assert line_time(line) == ts
    assert line_time(line.rpartition(b" ")[0]) is None


# --- rendering ----------------------------------------------------------------------------------


def test_ago_and_size_read_like_a_person_writes_them() -> None:
    assert [render.ago(s) for s in (0, 59, 61, 3725, 90061, 86430, None)] == [
        "0s",
        "59s",
        "1m 1s",
        "1h 2m",
        "1d 1h",
        "1d",
        "-",
    ]
    assert [render.size(n) for n in (0, 512, 1536, 5 << 20, 1 << 30)] == [
        "0 B",
        "512 B",
        "1.5 KiB",
        "5.0 MiB",
        "1.0 GiB",
    ]
    assert render.when(0) == "1970-01-01T00:00:00Z"
    assert render.when(None) == "never"


def test_table_aligns_columns() -> None:
    assert render.table([["a", "bb"], ["ccc", "d"]]) == "  a    bb\n  ccc  d\n"


@pytest.mark.parametrize(
    ("outcome", "code"),
    [("ok", 0), ("problem", 1), ("usage", 2), ("cannot", 3)],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_run_prints_one_result_and_returns_the_documented_code(
    outcome: str, code: int, as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    def collect(args: argparse.Namespace) -> render.Result:
        if outcome == "usage":
            raise UsageError("bad option")
        if outcome == "cannot":
            raise CannotRun("no spool")
        return {"ok": outcome == "ok", "problems": [] if outcome == "ok" else ["it broke"]}

    args = argparse.Namespace(json=as_json)
    assert render.run("test", args, collect, render.problems_text) == code
    out, err = capsys.readouterr()
    if outcome in ("usage", "cannot"):
        assert err.startswith("edge-agent test: ")
        assert (
            json.loads(out) == {"ok": False, "error": err[17:].strip(), "exit": code}
            if (as_json)
            else out == ""
        )
    elif as_json:
        assert json.loads(out)["ok"] is (code == 0)
    else:
        assert out == ("no problems found\n" if code == 0 else "PROBLEM: it broke\n")


# --- is the agent running -----------------------------------------------------------------------


def test_flocks_reads_holders_and_leaves_waiters_out() -> None:
    text = (
        "1: FLOCK  ADVISORY  WRITE 11619 fe:00:2146328 0 EOF\n"
        "1: -> FLOCK  ADVISORY  WRITE 11700 fe:00:2146328 0 EOF\n"
        "2: POSIX  ADVISORY  WRITE 800 08:01:77 0 EOF\n"
        "3: OFDLCK ADVISORY  READ  -1 00:1a:12 0 EOF\n"
    )
    assert running.flocks(text) == [(11619, (254, 0), 2146328)]


def test_lock_holder_sees_the_agents_lock_without_taking_it(tmp_path: Path) -> None:
    assert running.lock_holder(tmp_path) is None  # no lock file: no agent ever ran here
    handle = lock_data_dir(tmp_path)
    try:
        assert running.lock_holder(tmp_path) == os.getpid()
        # the agent still holds it: nobody else took it meanwhile
        with (tmp_path / "agent.lock").open() as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        handle.close()
    assert running.lock_holder(tmp_path) is None


def test_status_endpoint_of_a_wildcard_listen_is_asked_on_loopback(tmp_path: Path) -> None:
    def listen(address: str) -> str:
        return running.endpoint(load_config(write_config(tmp_path, listen=address)).status)

    assert listen("0.0.0.0:9466") == "http://127.0.0.1:9466"
    assert listen("[::]:9466") == "http://[::1]:9466"
    assert listen("127.0.0.2:1234") == "http://127.0.0.2:1234"


# --- output health ------------------------------------------------------------------------------


def live(problems: dict[str, str] | None = None, **counts: float) -> Live:
    samples = [
        Sample("edge_output_requests_total", {"output": "cloud", "outcome": k}, v)
        for k, v in counts.items()
    ]
    return Live(not problems, problems or {}, samples)


def test_output_health() -> None:
    now = 1000.0
    assert status.output_health("cloud", 5, None, None, now) == ("unknown", None)
    said = {"output:cloud": "HTTP 401 from http://x/write: check url, token"}
    assert status.output_health("cloud", 5, None, live(said), now) == (
        "unhealthy",
        said["output:cloud"],
    )
    assert status.output_health("cloud", 0, None, live(), now) == ("ok", None)
    assert status.output_health("cloud", 5, None, live(), now) == ("ok", None)  # first try pending
    assert status.output_health("cloud", 5, now - 10, live(), now) == ("ok", None)
    health, why = status.output_health("cloud", 5, None, live(connection_error=3), now)
    assert health == "stalled"
    assert (
        why
        == "5 lines wait and no write was accepted since the agent started (connection_error x3)"
    )
    health, why = status.output_health("cloud", 7, now - 600, live(**{"204": 9, "503": 2}), now)
    assert (health, why) == (
        "stalled",
        "7 lines wait and no write was accepted for 10m (503 x2)",
    )


# --- cursor findings ----------------------------------------------------------------------------


def findings(
    positions: dict[tuple[str, str], Position],
    running_agent: bool = False,
    wanted: dict[str, list[str]] | None = None,
) -> tuple[list[str], list[str]]:
    ranges = {"raw": StreamRange(first=10, last=20, chunks=11, lines=1100, stored=5000)}
    lines_at = {("raw", 15): 100, ("raw", 10): 100}
    return spool_check.cursor_findings(
        positions, ranges, 20, lines_at, wanted or {"cloud": ["raw"]}, running_agent
    )


def test_sane_cursors_raise_nothing() -> None:
    assert findings({("cloud", "raw"): Position(10, 0)}) == ([], [])
    for pos in (Position(15, 99), Position(15, 100), Position(21, 0)):
        assert findings({("cloud", "raw"): pos})[0] == []


def test_cursor_problems_are_named_precisely() -> None:
    problems, _ = findings({("cloud", "raw"): Position(31, 0)})
    assert problems == [
        "cursor cloud/raw points to chunk 31, past the newest chunk ever written (20): "
        "the next 10 chunks written would be skipped"
    ]
    problems, _ = findings({("cloud", "raw"): Position(15, 101)})
    assert problems == ["cursor cloud/raw points to line 101 of chunk 15, which holds 100 lines"]
    problems, _ = findings({("cloud", "raw"): Position(0, -1)})
    assert problems == ["cursor cloud/raw at chunk 0 line -1 is not a position"]
    problems, _ = findings({}, running_agent=True)
    assert problems == [
        "cursor cloud/raw is missing while the agent runs: its progress is not being saved"
    ]


def test_cursor_notes_for_what_the_agent_handles() -> None:
    problems, notes = findings({("cloud", "raw"): Position(4, 0), ("old", "raw"): Position(12, 0)})
    assert problems == []
    assert notes == [
        "cursor cloud/raw is behind the stream's oldest chunk (4 < 10): lines it had not read "
        "were dropped by the spool's budget",
        "cursor old/raw belongs to no configured consumer: the agent forgets it at its next start",
    ]
    _, notes = findings({("cloud", "raw"): Position(12, 0)})
    assert notes == [
        "stream raw keeps chunks from 10 that every cursor has passed (the slowest is at 12): "
        "the agent deletes them with its next commit or start"
    ]
    _, notes = findings({}, wanted={"cloud": ["aggregates"]})
    assert notes == [
        "cursor cloud/aggregates does not exist yet: the agent starts it at the stream's "
        "oldest chunk",
        "stream raw holds 1100 lines that no consumer reads: they stay until the budget drops them",
    ]


# --- the commands against a real spool file -----------------------------------------------------


def write_config(tmp_path: Path, listen: str = "127.0.0.1:9466", max_size: str = "1GiB") -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[agent]
name = "unit"
data_dir = "{tmp_path / "data"}"
[mqtt]
url = "mqtt://127.0.0.1:{free_port()}"
[[mqtt.subscriptions]]
topic = "plant/{{line}}/{{measurement}}"
[[outputs]]
name = "cloud"
url = "http://127.0.0.1:{free_port()}"
api = "v1"
database = "plants"
[spool]
max_size = "{max_size}"
[status]
listen = "{listen}"
"""
    )
    return config


def point(i: int) -> str:
    return f"temp,line=l{i % 3} value={i} {T0 + i * NS}"


N = 250


def make_spool(tmp_path: Path, cursor: Position | None = None) -> Path:
    """N lines in three chunks (100, 100, 50) written by the agent's Spool; the output's cursor
    at ``cursor``."""

    async def write() -> None:
        spool = Spool(
            tmp_path / "data" / "spool.db", Budget(1 << 30, 1e9, 0, "drop_oldest"), "full"
        )
        await spool.open()
        await spool.register({"cloud": ["raw"]})
        for first, last in ((0, 100), (100, 200), (200, N)):
            await spool.ingest("raw", [point(i) for i in range(first, last)])
        if cursor is not None:
            await spool.commit_cursor("cloud", "raw", cursor)
        await spool.close()

    asyncio.run(write())
    return write_config(tmp_path)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_of_a_stopped_agent_counts_the_backlog_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_spool(tmp_path, Position(2, 30))  # 70 lines of chunk 2 and chunk 3's 50 left
    code, out, _ = run_cli(capsys, "status", "--config", str(config), "--json")
    assert code == 1  # the agent is not running
    result = json.loads(out)
    (cloud,) = result["outputs"]
    unsent = [point(i) for i in range(130, N)]
    assert cloud["lines"] == len(unsent) == 120
    assert cloud["bytes"] == sum(len(line) + 1 for line in unsent)
    assert cloud["oldest"] == "2024-05-01T06:02:10Z"  # the stamp of line 130
    assert cloud["streams"]["raw"]["cursor"] == {"chunk": 2, "line": 30}
    assert cloud["health"] == "unknown"
    assert cloud["last_success"] is None
    assert result["agent"] == {
        "name": "unit",
        "running": False,
        "pid": None,
        "status_endpoint": "http://127.0.0.1:9466",
        "live": False,
        "ready": None,
        "not_ready_because": None,
        "mqtt_connected": None,
    }
    assert result["drops_since_start"] is None
    assert result["spool"]["streams"]["raw"]["lines"] == N - 100  # chunk 1 read and deleted
    assert result["problems"][0].startswith("the agent is not running")
    code, text, _ = run_cli(capsys, "status", "--config", str(config))
    assert code == 1
    assert "agent 'unit': not running" in text
    assert "cloud   unknown  120" in text


def test_export_writes_the_backlog_with_its_timestamps(tmp_path: Path) -> None:
    cfg = load_config(make_spool(tmp_path, Position(1, 95)))
    sink = io.BytesIO()
    result = spool_export.export(cfg, cfg.outputs[0], Window(), False, sink)
    expected = "".join(point(i) + "\n" for i in range(95, N)).encode()
    assert sink.getvalue() == expected
    assert result["lines"] == N - 95
    assert result["bytes"] == len(expected)
    assert result["ok"] and not result["advanced"]
    assert result["streams"]["raw"]["from"] == {"chunk": 1, "line": 95}


def test_export_filters_by_line_timestamp(tmp_path: Path) -> None:
    cfg = load_config(make_spool(tmp_path))
    since = parse_time("2024-05-01T06:01:40Z", 0)  # line 100
    until = parse_time("2024-05-01T06:03:20.000000001Z", 0)  # just after line 200
    sink = io.BytesIO()
    result = spool_export.export(cfg, cfg.outputs[0], Window(since, until), False, sink)
    assert sink.getvalue().decode().splitlines() == [point(i) for i in range(100, 201)]
    assert result["filtered_out"] == N - 101


def test_export_advance_moves_the_cursor_past_what_it_wrote(tmp_path: Path) -> None:
    cfg = load_config(make_spool(tmp_path, Position(3, 10)))
    out = tmp_path / "usb.lp"
    with out.open("wb") as sink:
        result = spool_export.export(cfg, cfg.outputs[0], Window(), True, sink)
    assert result["advanced"] and result["lines"] == 40
    assert out.read_bytes().decode().splitlines() == [point(i) for i in range(210, N)]
    again = io.BytesIO()
    assert spool_export.export(cfg, cfg.outputs[0], Window(), False, again)["lines"] == 0
    assert again.getvalue() == b""
    assert status.gather(cfg, 0.0)["outputs"][0]["lines"] == 0


def test_export_advance_is_refused_while_the_data_dir_is_held(tmp_path: Path) -> None:
    cfg = load_config(make_spool(tmp_path))
    handle = lock_data_dir(cfg.agent.data_dir)
    try:
        with pytest.raises(CannotRun, match="--advance needs the agent stopped"):
            spool_export.export(cfg, cfg.outputs[0], Window(), True, io.BytesIO())
    finally:
        handle.close()
    assert spool_check.gather(cfg)["checks"][2]["cursors"]["cloud/raw"] == {"chunk": 1, "line": 0}


def test_check_passes_a_sound_spool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_spool(tmp_path, Position(1, 40))
    code, out, _ = run_cli(capsys, "spool", "check", "--config", str(config), "--json")
    assert code == 0, out
    result = json.loads(out)
    assert [c["name"] for c in result["checks"]] == ["integrity", "chunks", "cursors", "budget"]
    chunks = result["checks"][1]
    assert (chunks["chunks"], chunks["lines"]) == (3, N)
    assert chunks["line_bytes"] == sum(len(point(i)) + 1 for i in range(N))
    budget = result["checks"][3]
    assert budget["counted_bytes"] == budget["actual_bytes"] > 0
    code, text, _ = run_cli(capsys, "spool", "check", "--config", str(config))
    assert code == 0
    assert text.endswith("no problems found\n")


def damage(tmp_path: Path, sql: str, *args: object) -> Path:
    config = make_spool(tmp_path)
    db = sqlite3.connect(tmp_path / "data" / "spool.db")
    with db:
        db.execute(sql, args)
    db.close()
    return config


def segment(text: str) -> bytes:
    return Compressor().segment(text.encode() + b"\n").data


@pytest.mark.parametrize(
    ("sql", "args", "message"),
    [
        (
            "UPDATE chunks SET body=? WHERE id=2",
            (
                segment(
                    "\n".join(point(i) for i in range(100, 200)).replace("value=150", "value=151")
                ),
            ),
            "chunks: chunk 2 (raw): CRC-32 of its lines is",
        ),
        (
            "UPDATE chunks SET body=x'ffffffff' WHERE id=3",
            (),
            "chunks: chunk 3 (raw): body does not decode",
        ),
        (
            "UPDATE chunks SET lines=99 WHERE id=1",
            (),
            "chunks: chunk 1 (raw) holds 100 lines, its row says 99",
        ),
        (
            "UPDATE cursors SET chunk=9 WHERE consumer='cloud'",
            (),
            "cursors: cursor cloud/raw points to chunk 9, past the newest chunk ever written (3)",
        ),
        ("UPDATE chunks SET stored=stored+7 WHERE id=2", (), "budget: 1 chunks count other sizes"),
    ],
)
def test_check_names_each_kind_of_damage(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sql: str,
    args: tuple[object, ...],
    message: str,
) -> None:
    config = damage(tmp_path, sql, *args)
    code, out, _ = run_cli(capsys, "spool", "check", "--config", str(config), "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert any(p.startswith(message) for p in problems), problems


def test_a_line_without_timestamp_fails_check_and_stays_out_of_an_export(tmp_path: Path) -> None:
    text = "\n".join(point(i) for i in range(200, N)).replace(f" {T0 + 220 * NS}", "", 1)
    body = segment(text)
    config = damage(
        tmp_path,
        "UPDATE chunks SET body=?, crc=?, bytes=?, stored=? WHERE id=3",
        body,
        zlib.crc32(text.encode() + b"\n"),
        len(text) + 1,
        len(body),
    )
    cfg = load_config(config)
    assert spool_check.gather(cfg)["problems"] == [
        f"chunks: chunk 3 (raw) line 20: no timestamp: {point(220).rpartition(' ')[0].encode()!r}"
    ]
    sink = io.BytesIO()
    result = spool_export.export(cfg, cfg.outputs[0], Window(), False, sink)
    assert not result["ok"] and result["lines"] == N - 1
    assert point(220).rpartition(" ")[0].encode() not in sink.getvalue()
    assert result["problems"][0].startswith("1 lines without a timestamp were left out")


def test_check_reports_a_spool_over_its_budget(tmp_path: Path) -> None:
    make_spool(tmp_path)
    cfg = load_config(write_config(tmp_path, max_size="1KiB"))
    (problem,) = spool_check.gather(cfg)["problems"]
    assert problem.startswith("budget: the chunks hold ")
    assert "over max_size = 1.0 KiB" in problem


@pytest.mark.parametrize(
    "argv",
    [["status"], ["spool", "check"], ["spool", "export", "--output", "cloud"]],
)
def test_no_spool_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    config = write_config(tmp_path)
    code, out, err = run_cli(capsys, *argv, "--config", str(config), "--json")
    assert code == 3
    assert "no spool at" in err
    summary = err.splitlines()[-1] if "export" in argv else out  # export's stdout has the lines
    assert json.loads(summary)["exit"] == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--output", "nope"], "no output named 'nope'"),
        (["--output", "cloud", "--since", "1h", "--until", "2h"], "is not before --until"),
        (["--output", "cloud", "--since", "last week"], "cannot read 'last week' as a time"),
        (["--output", "cloud", "--since", "2h", "--advance"], "--advance moves the cursor"),
    ],
)
def test_export_usage_errors_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    config = make_spool(tmp_path)
    code, out, err = run_cli(capsys, "spool", "export", "--config", str(config), *argv)
    assert code == 2
    assert message in err
    assert out == ""


def test_bad_config_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\nnmae = 'x'\n")
    for argv in (["status"], ["spool", "check"]):
        code, _, err = run_cli(capsys, *argv, "--config", str(config))
        assert code == 2
        assert "invalid configuration" in err
