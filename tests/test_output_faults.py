"""The HTTP outcome table (DESIGN §2) against FaultServer, a fault double for the answers real
servers cannot be made to give on demand. The output runs in-process on a real spool."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from fault_server import FaultServer

from agent.config import OutputSection
from agent.deadletter import DeadLetters
from agent.forward.http import Writer
from agent.forward.output import Output
from agent.spool.budget import Budget
from agent.spool.store import Spool
from agent.status.metrics import Metrics

BUDGET = Budget(max_size=1 << 30, max_age=86400, min_free_disk=0, when_full="drop_oldest")


def lines(n: int, bad_at: int | None = None) -> list[str]:
    return [
        f"m,sensor=s{i % 7} value={'BAD' if i == bad_at else i} {1_700_000_000_000_000_000 + i}"
        for i in range(n)
    ]


class Rig:
    def __init__(self, tmp: Path, server: FaultServer, **cfg: object) -> None:
        self.tmp = tmp
        self.server = server
        settings = {
            "name": "cloud",
            "url": server.url,
            "api": "v2",
            "bucket": "b",
            "org": "o",
            "token": "secret",
            "batch_size": 5000,
            "flush_interval": 0.05,
            "retry_max_backoff": 0.05,
            "config_error_retry": 0.2,
            **cfg,
        }
        self.cfg = OutputSection.model_validate(settings)
        self.metrics = Metrics()
        self.spool = Spool(tmp / "spool.db", BUDGET, "normal")
        self.dead = DeadLetters(tmp / "dead" / "cloud.jsonl")
        self.stop = asyncio.Event()

    async def __aenter__(self) -> Rig:
        await self.spool.open()
        await self.spool.register({"cloud": ["raw"]})
        self.session = aiohttp.ClientSession()
        self.output = Output(
            self.cfg, self.spool, Writer(self.cfg, self.session), self.dead, self.metrics
        )
        self.spool.listen(self.output.new_data)
        self.task = asyncio.create_task(self.output.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await self.task
        await self.output.drain(1.0)
        await self.session.close()
        await self.spool.close()

    async def wait(self, check: Callable[[], bool], limit: float = 20) -> None:
        deadline = time.monotonic() + limit
        while not check():
            assert time.monotonic() < deadline, f"timed out; requests: {self.server.requests[-5:]}"
            await asyncio.sleep(0.02)

    def dead_letters(self) -> list[dict[str, object]]:
        path = self.tmp / "dead" / "cloud.jsonl"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines()]

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"output": "cloud", **labels})
        return value or 0.0


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
