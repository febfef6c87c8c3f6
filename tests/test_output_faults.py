"""The HTTP outcome table (DESIGN §2) against FaultServer, a fault double for the answers real
servers cannot be made to give on demand. The output runs in-process on a real spool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fault_server import FaultServer
from output_rig import BUDGET, Rig, lines

from agent.spool.store import Spool


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    fault = FaultServer()
    fault.start()
    yield fault
    fault.stop()


async def test_throttle_honours_retry_after(tmp_path: Path, server: FaultServer) -> None:
    server.script([(429, {"Retry-After": "1"}), (503, {"Retry-After": "1"})])
    async with Rig(tmp_path, server) as rig:
        await rig.spool.ingest("raw", lines(100))
        await rig.wait(lambda: len(server.lines) == 100)
        times = [r.at for r in server.requests]
        assert times[1] - times[0] >= 0.9 and times[2] - times[1] >= 0.9
        assert rig.metric("edge_output_retries_total") == 2


async def test_server_errors_are_retried_until_success(tmp_path: Path, server: FaultServer) -> None:
    server.script([(500, {}), (502, {}), (504, {}), (408, {}), (503, {})])
    async with Rig(tmp_path, server) as rig:
        await rig.spool.ingest("raw", lines(1000))
        await rig.wait(lambda: len(server.lines) == 1000)
        assert sorted(server.lines) == sorted(lines(1000))
        assert rig.metric("edge_output_requests_total", outcome="500") == 1


async def test_413_splits_and_a_lone_oversized_line_is_dead_lettered(
    tmp_path: Path, server: FaultServer
) -> None:
    server.max_body_bytes = 20_000
    huge = 'm,sensor=big value="' + "x" * 30_000 + '" 1700000000000000000'
    async with Rig(tmp_path, server) as rig:
        await rig.spool.ingest("raw", [*lines(2500), huge, *lines(2500)[:10]])
        await rig.wait(lambda: len(server.lines) == 2510 and len(rig.dead_letters()) == 1)
        assert all(r.body_bytes <= 20_000 for r in server.requests if r.status == 204)
        assert rig.dead_letters()[0]["status"] == 413
        assert rig.dead_letters()[0]["line"] == huge


async def test_400_bisects_one_bad_line_out_of_5000(tmp_path: Path, server: FaultServer) -> None:
    server.bad_marker = "value=BAD"
    async with Rig(tmp_path, server) as rig:
        batch = lines(5000, bad_at=1234)
        await rig.spool.ingest("raw", batch)
        await rig.wait(lambda: len(server.lines) == 4999 and len(rig.dead_letters()) == 1)
        assert sorted(server.lines) == sorted(x for x in batch if "BAD" not in x)
        dead = rig.dead_letters()[0]
        assert dead["line"] == batch[1234] and dead["status"] == 400
        assert "unable to parse" in str(dead["error"])
        assert len(server.requests) < 40  # bisection, not one request per line
        await rig.wait(lambda: rig.spool.stats["raw"].lines == 0)


async def test_401_pauses_without_dropping_and_resumes(tmp_path: Path, server: FaultServer) -> None:
    server.auth_token = "the-right-one"
    async with Rig(tmp_path, server) as rig:
        await rig.spool.ingest("raw", lines(300))
        await rig.wait(lambda: not rig.output.healthy)
        assert "token" in rig.output.problem
        assert rig.metric("edge_output_healthy") == 0
        await asyncio.sleep(0.5)
        assert server.lines == []
        assert rig.spool.stats["raw"].lines == 300
        server.auth_token = "secret"  # the operator fixes the token
        await rig.wait(lambda: len(server.lines) == 300)
        assert rig.output.healthy
        await rig.wait(lambda: rig.spool.stats["raw"].lines == 0)
        assert rig.dead_letters() == []


async def test_cursor_stays_behind_unfinished_writes(tmp_path: Path, server: FaultServer) -> None:
    server.script([(503, {"Retry-After": "30"})])
    async with Rig(tmp_path, server) as rig:
        await rig.spool.ingest("raw", lines(10))
        await rig.wait(lambda: len(server.requests) == 1)
        start = await rig.spool.cursor("cloud", "raw")
    spool = Spool(tmp_path / "spool.db", BUDGET, "normal")
    await spool.open()
    await spool.register({"cloud": ["raw"]})
    assert await spool.cursor("cloud", "raw") == start
    assert spool.stats["raw"].lines == 10
    await spool.close()


async def test_batches_respect_size_and_several_are_in_flight(
    tmp_path: Path, server: FaultServer
) -> None:
    async with Rig(tmp_path, server, batch_size=1000, max_in_flight=3) as rig:
        for _ in range(10):
            await rig.spool.ingest("raw", lines(1000))
        await rig.wait(lambda: len(server.lines) == 10_000)
        assert max(r.lines for r in server.requests) <= 1000
        assert all(r.gzip for r in server.requests)


async def test_a_400_about_the_request_pauses_instead_of_dead_lettering_everything(
    tmp_path: Path, server: FaultServer
) -> None:
    """A server (or a proxy) that refuses every request with the same 400, like InfluxDB 2's
    "provide either orgID or org": a configuration problem, not 300 bad lines."""
    server.outage = 400
    async with Rig(tmp_path, server) as rig:
        await rig.spool.ingest("raw", lines(300))
        await rig.wait(lambda: not rig.output.healthy)
        assert "whole request" in rig.output.problem and "outage 400" in rig.output.problem
        await asyncio.sleep(0.5)
        assert rig.dead_letters() == []
        assert rig.spool.stats["raw"].lines == 300
        server.outage = None  # the operator fixes the org
        await rig.wait(lambda: len(server.lines) == 300)
        await rig.wait(lambda: rig.spool.stats["raw"].lines == 0)
        assert rig.dead_letters() == [] and rig.output.healthy


async def test_bad_first_and_last_lines_are_still_bad_lines(
    tmp_path: Path, server: FaultServer
) -> None:
    server.bad_marker = "value=BAD"
    batch = lines(100)
    batch[0] = batch[0].replace("value=0 ", "value=BAD ")
    batch[-1] = batch[-1].replace("value=99 ", "value=BAD ")
    async with Rig(tmp_path, server) as rig:
        await rig.spool.ingest("raw", batch)
        await rig.wait(lambda: len(server.lines) == 98 and len(rig.dead_letters()) == 2)
        assert rig.output.healthy
        assert {d["line"] for d in rig.dead_letters()} == {batch[0], batch[-1]}


async def test_a_failed_dead_letter_write_is_retried_and_holds_the_cursor(
    tmp_path: Path, server: FaultServer
) -> None:
    """Before, the exception left the batch unfinished for good: the cursor froze while later
    batches succeeded, so the spool never freed space."""
    server.bad_marker = "value=BAD"
    (tmp_path / "dead").write_text("a file where the dead-letter directory should be")
    async with Rig(tmp_path, server, batch_size=100) as rig:
        await rig.spool.ingest("raw", lines(100, bad_at=50))
        failures = {"file": "cloud.jsonl"}
        registry = rig.metrics.registry
        await rig.wait(
            lambda: (
                (registry.get_sample_value("edge_dead_letter_write_errors_total", failures) or 0)
                > 0
            )
        )
        await rig.spool.ingest("raw", lines(200)[100:])
        await rig.wait(lambda: len(server.lines) == 199)
        assert "dead letter write failed" in rig.output.disk_problem
        assert rig.spool.stats["raw"].lines == 200  # nothing freed: the cursor waits
        (tmp_path / "dead").unlink()  # the disk is writable again
        await rig.wait(lambda: len(rig.dead_letters()) == 1)
        await rig.wait(lambda: rig.spool.stats["raw"].lines == 0)
        assert rig.output.disk_problem == ""


async def test_an_unreachable_server_is_pinged_every_second_not_sent_batches(
    tmp_path: Path, server: FaultServer
) -> None:
    """Connection refused is probed with GET /ping at a short fixed interval, so the backlog
    starts within seconds of the link returning, however long the outage; the exponential
    backoff (here up to 60 s) stays for a live server that fails."""
    async with Rig(tmp_path, server, retry_max_backoff=60.0) as rig:
        server.stop()
        await rig.spool.ingest("raw", lines(100))
        await asyncio.sleep(8)
        pings = rig.metric("edge_output_probes_total", result="none")
        assert 5 <= pings <= 9
        server.start()
        back = time.monotonic()
        await rig.wait(lambda: len(server.lines) == 100)
        assert time.monotonic() - back < 2.5
        assert len(server.requests) == 1  # the batch once, after a ping was answered
