"""An Output running in-process on a real spool, writing to a FaultServer: the rig for output
tests. The spool registers the output for the streams its config names."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
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
        await self.spool.register({"cloud": self.cfg.streams})
        self.session = aiohttp.ClientSession()
        self.output = Output(
            self.cfg, self.spool, Writer(self.cfg, self.session), self.dead, self.metrics
        )
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
