"""The dead-letter files as ``edge-agent dead-letters`` reads them: which file belongs to whom,
in which order, where a replay left off, and what records are grouped by."""

from __future__ import annotations

import json
from pathlib import Path

from agent.deadletter import DeadLetters, line_record, payload_record
from agent.ops.deadletters import MARK, reason, records, sources, taken_files


def test_taken_files_come_first_then_rotated_then_live(tmp_path: Path) -> None:
    dead = DeadLetters(tmp_path / "cloud.jsonl", max_bytes=10)
    dead.write([line_record("m v=1 1", 400, "no")])
    dead.write([line_record("m v=2 2", 400, "no")])  # the first file is full: rotated to .1
    work = tmp_path / "cloud.replaying"
    work.mkdir()
    assert [p.name for p in dead.take(work, first=7)] == [
        "000000000007.jsonl",
        "000000000008.jsonl",
    ]
    assert not dead.path.exists() and not dead.rotated.exists()
    dead.write([line_record("m v=3 3", 400, "no")])
    dead.write([line_record("m v=4 4", 400, "no")])
    (work / MARK).write_text(json.dumps({"file": "000000000007.jsonl", "offset": 0}))
    DeadLetters(tmp_path / "ingest.jsonl").write([payload_record("t", b"\xff", "bad", "x")])

    found = sources(tmp_path)
    assert sorted(found) == ["cloud", "ingest"]
    lines = [r["line"] for path, offset in found["cloud"] for r, _ in records(path, offset)]
    assert lines == ["m v=1 1", "m v=2 2", "m v=3 3", "m v=4 4"]
    assert [p.name for p in taken_files(work)] == ["000000000007.jsonl", "000000000008.jsonl"]

    # Where a replay left off, the records before the offset are no longer dead letters.
    first = work / "000000000007.jsonl"
    (work / MARK).write_text(json.dumps({"file": first.name, "offset": first.stat().st_size}))
    lines = [
        r["line"] for path, offset in sources(tmp_path)["cloud"] for r, _ in records(path, offset)
    ]
    assert lines == ["m v=2 2", "m v=3 3", "m v=4 4"]


def test_a_line_being_written_is_not_read_yet_but_a_torn_one_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "cloud.jsonl"
    path.write_text(json.dumps(line_record("m v=1 1", 400, "no")) + '\n{"time": 1, "li')
    assert len(list(records(path))) == 1
    last, _ = list(records(path, whole=False))[-1]
    assert last == {"unreadable": '{"time": 1, "li'}


def test_reasons_group_by_the_answer_without_the_line_it_quotes() -> None:
    conflict = (
        '{"error":"partial write: field type conflict: input field \\"value\\" on measurement '
        '\\"t\\" is type float, already exists as type string dropped=3"}'
    )
    assert reason(line_record("t v=1 1", 400, conflict)) == (
        'HTTP 400: partial write: field type conflict: input field "value" on measurement "t" '
        "is type float, already exists as type string"
    )
    one = reason(line_record("m v=x 1", 400, '{"error":"unable to parse \'m v=x 1\': bad"}'))
    other = reason(line_record("n v=y 2", 400, '{"error":"unable to parse \'n v=y 2\': bad"}'))
    assert one == other == "HTTP 400: unable to parse '…': bad"
    assert reason(payload_record("t", b"x", "unparseable", "why")) == "unparseable"
    assert reason({"unreadable": "{"}) == "unreadable record"
