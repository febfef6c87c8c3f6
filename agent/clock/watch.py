"""The clock stage: looks at the clocks every second (and at every commit), asks the servers for
their time while the wall clock is unconfirmed, and reports every change (log, metrics,
/readyz, the spool's meta for a restart in the same boot)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from agent.clock import kernel
from agent.clock.trust import NS, ClockTrust, Event, Sample
from agent.logs import RateLimited
from agent.spool.store import Spool
from agent.status.metrics import Metrics

log = structlog.get_logger("edge_agent.clock")

LOOK_INTERVAL = 1.0
PROBE_INTERVAL = 5.0
META_BOOT, META_OFFSET = "clock_boot", "clock_offset"

# A server's time: its Date header in epoch seconds, None when it gave none (or no answer).
ServerClock = tuple[str, Callable[[], Awaitable[float | None]]]


def sample() -> Sample:
    return Sample(time.time_ns(), kernel.boottime_ns())


class ClockWatch:
    def __init__(
        self,
        trust: ClockTrust,
        spool: Spool,
        metrics: Metrics,
        servers: Sequence[ServerClock],
        on_trusted: Callable[[], None],
    ) -> None:
        self.trust = trust
        self.spool = spool
        self.metrics = metrics
        self.servers = servers
        self._on_trusted = on_trusted
        self._synchronised: bool | None = None
        self._persist: set[asyncio.Task[None]] = set()
        self._log = RateLimited(300.0)

    async def start(self) -> None:
        """Before intake starts: a confirmation persisted earlier in this boot still holds if
        the clock has not stepped since (an agent restart)."""
        self._synchronised = kernel.synchronised()
        boot = await self.spool.get_meta(META_BOOT)
        offset = await self.spool.get_meta(META_OFFSET)
        if not self.trust.restore(boot, offset, sample()):
            self._report(self.trust.observe(sample(), self._synchronised))
        if not self.trust.trusted:
            log.info("clock_unconfirmed", problem=self.trust.problem, note="readings are held")
        self.metrics.clock_trusted.set(int(self.trust.trusted))

    def look(self) -> None:
        """Cheap (two clock reads): called before every commit, so a step is seen before any
        reading is stamped with it."""
        self._report(self.trust.observe(sample(), self._synchronised))

    async def run(self, stop: asyncio.Event) -> None:
        last_probe = -PROBE_INTERVAL
        while not stop.is_set():
            self._synchronised = kernel.synchronised()
            self.look()
            if not self.trust.trusted and time.monotonic() - last_probe >= PROBE_INTERVAL:
                last_probe = time.monotonic()
                await self._ask_servers()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOOK_INTERVAL)

    async def _ask_servers(self) -> None:
        for name, ask in self.servers:
            sent = sample()
            server = await ask()
            if server is None:
                continue
            self._report(self.trust.server_time(server, sent, sample(), name))
            if self.trust.trusted:
                return
        suppressed = self._log.allow("unconfirmed")
        if not self.trust.trusted and suppressed is not None:
            log.warning(
                "clock_unconfirmed",
                problem=self.trust.problem,
                note="readings are held",
                suppressed_since_last=suppressed,
            )

    def _report(self, event: Event | None) -> None:
        if event is None:
            return
        trust = self.trust
        self.metrics.clock_trusted.set(int(trust.trusted))
        if event == "trusted":
            log.info("clock_trusted", confirmed_by=trust.confirmed_by)
            self._save()
            self._on_trusted()
        elif event == "stepped":
            self.metrics.clock_steps.labels("followed").inc()
            log.warning("clock_stepped", seconds=round(trust.step / NS, 3), action="followed")
            self._save()
        else:
            self.metrics.clock_steps.labels("distrusted").inc()
            log.warning(
                "clock_stepped",
                seconds=round(trust.step / NS, 3),
                action="readings are held until the clock is confirmed again",
            )

    def _save(self) -> None:
        offset = self.trust.offset
        if offset is None:
            return
        task = asyncio.create_task(
            self.spool.set_meta({META_BOOT: self.trust.boot, META_OFFSET: offset})
        )
        self._persist.add(task)
        task.add_done_callback(self._saved)

    def _saved(self, task: asyncio.Task[None]) -> None:
        self._persist.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Only costs a confirmation after a restart in this boot: not worth more than a line.
            log.warning("clock_confirmation_not_saved", error=str(task.exception()))
