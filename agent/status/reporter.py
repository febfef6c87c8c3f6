"""The telemetry stage: every ``[telemetry] interval``, the agent's health into its own spool.

Into the spool's ``telemetry`` stream, through the commit path readings take, not straight to a
server: a point measured during an outage is sent once the link returns, stamped when it was
measured, so the cloud learns how the gateway fared. Stamps follow the readings' clock rules: while
the wall clock is unconfirmed, points are stamped from the boot clock and held in a held stream of
their own (agent/clock/hold.py), placed onto the wall clock once it is confirmed, so a 1970 boot
clock never reaches the cloud. Placing them is this stage's job, not intake's: telemetry must not
wait for an MQTT session.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import structlog
from prometheus_client import Counter

from agent.clock import hold
from agent.clock.watch import ClockWatch
from agent.config import Config
from agent.forward.output import Output
from agent.logs import RateLimited
from agent.parse.clock import IngestClock
from agent.spool.store import Body, Spool
from agent.status.metrics import TELEMETRY, Metrics
from agent.status.telemetry import AgentHealth, Health, OutputHealth, points

log = structlog.get_logger("edge_agent.telemetry")


class Reporter:
    def __init__(
        self,
        cfg: Config,
        spool: Spool,
        metrics: Metrics,
        clock_watch: ClockWatch,
        outputs: Sequence[Output],
        mqtt_up: Callable[[], bool],
        started: float,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.metrics = metrics
        self.clock_watch = clock_watch
        self.outputs = outputs
        self.mqtt_up = mqtt_up
        self.started = started  # monotonic
        # The readings' clock class, an instance of its own: intake's notes which stamps of a
        # message the boot clock gave, which a point stamped between two messages would upset.
        self.clock = IngestClock()
        self.version = _version()
        self._log = RateLimited()

    async def run(self, stop: asyncio.Event) -> None:
        """A point set at once (a restart shows at its time), then one per interval."""
        interval = self.cfg.telemetry.interval
        due = time.monotonic()
        while not stop.is_set():
            await self.report()
            due = max(due + interval, time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), due - time.monotonic())

    async def report(self) -> None:
        """One interval: stamp, measure, write. Whatever fails costs this interval's points (the
        next ones carry the counters on), never the agent's intake."""
        try:
            holding, stamp = self._stamp()
            await self._write(await self.measure(), holding, stamp)
        except Exception:
            suppressed = self._log.allow("failed")
            if suppressed is not None:
                log.exception("telemetry_failed", suppressed_since_last=suppressed)

    async def measure(self) -> Health:
        """The agent's numbers first, with no await between them and the stamp; then the
        outputs' backlogs, which the spool thread counts."""
        m = self.metrics
        spool = self.spool
        agent = AgentHealth(
            received=_total(m.received),
            committed=_total(m.committed, stream="raw"),
            dead_letters=_total(m.rejected),
            mqtt_connected=self.mqtt_up(),
            clock_trusted=self.clock_watch.trust.trusted,
            spool_bytes=sum(s.bytes for s in spool.stats.values()) + spool.state_bytes,
            spool_budget_bytes=spool.budget.max_size,
            rss_bytes=rss_bytes(),
            cpu_seconds=time.process_time(),
            uptime_seconds=time.monotonic() - self.started,
            version=self.version,
        )
        dropped = {labels["reason"]: int(value) for labels, value in _counts(m.dropped)}
        outputs = [await self._output(output) for output in self.outputs]
        return Health(agent, outputs, dropped)

    async def _output(self, output: Output) -> OutputHealth:
        lines = stored = 0
        oldest: float | None = None
        for stream in output.cfg.streams:
            pending = await self.spool.pending(stream, await self.spool.cursor(output.name, stream))
            lines += pending.lines
            stored += pending.stored
            if pending.oldest is not None:
                oldest = pending.oldest if oldest is None else min(oldest, pending.oldest)
        m, name = self.metrics, output.name
        return OutputHealth(
            name=name,
            backlog_lines=lines,
            backlog_bytes=stored,
            oldest_age_seconds=0.0 if oldest is None else max(0.0, self.spool.age.now() - oldest),
            last_success_age_seconds=(
                None if output.last_success is None else time.monotonic() - output.last_success
            ),
            healthy=output.healthy,
            lines_sent=_total(m.lines_sent, output=name),
            bytes_sent=_total(m.bytes_sent, output=name),
            dead_letters=_total(m.dead_letters, output=name),
        )

    def _stamp(self) -> tuple[bool, int]:
        """The time of this interval's points, taken as they are measured (placing held points
        before writing them may take a while), and whether the boot clock gave it."""
        watch, clock = self.clock_watch, self.clock
        watch.look()  # a step must be seen before anything is stamped with it
        clock.holding = not watch.trust.trusted
        stamp = clock.next()
        clock.boot_stamped.clear()
        return clock.holding, stamp

    async def _write(self, health: Health, holding: bool, stamp: int) -> None:
        """Once the clock is trusted, what was held goes first."""
        trust = self.clock_watch.trust
        if trust.trusted:
            await self._place_held()
        lines = [
            line.encode()
            for line in points(self.cfg.agent.name, self.cfg.agent.tags, health, stamp)
        ]
        stream = TELEMETRY
        if holding:
            stream = hold.stream_of(trust.boot, TELEMETRY)
            lines = hold.mark(lines, [True] * len(lines))
        result = await self.spool.commit({stream: Body(b"\n".join(lines), len(lines))})
        for drop in result.drops:
            self.metrics.spool_dropped(drop.stream, drop.reason, drop.lines)
            log.warning("spool_dropped", stream=drop.stream, reason=drop.reason, lines=drop.lines)
        self.metrics.telemetry_points.labels("written" if result.committed else "not_written").inc(
            len(lines)
        )
        suppressed = self._log.allow("not_written")
        if not result.committed and suppressed is not None:
            log.warning(
                "telemetry_not_written",
                reason=result.blocked_reason,
                note="the next interval's points carry the counters on",
                suppressed_since_last=suppressed,
            )

    async def _place_held(self) -> None:
        """Points held while the clock was unconfirmed, onto the wall clock. Those of an earlier
        boot whose clock was never confirmed cannot be placed: discarded, counted, logged."""
        trust = self.clock_watch.trust
        for stream in hold.placed_into(self.spool.streams_like(hold.PREFIX), TELEMETRY):
            offset = trust.offset if hold.boot_of(stream) == trust.boot else None
            while chunk := await self.spool.oldest_chunk(stream):
                cid, body = chunk
                placed = hold.place(body, offset, time.time_ns(), 0, 0)
                moved = Body(b"\n".join(placed.lines), len(placed.lines))
                await self.spool.move_chunk(stream, cid, TELEMETRY, moved)
                if placed.rejected:
                    self.metrics.telemetry_points.labels("unplaceable").inc(len(placed.rejected))
                    log.warning(
                        "telemetry_unplaceable",
                        points=len(placed.rejected),
                        reason=placed.rejected[0][2],
                    )


def _counts(counter: Counter) -> Iterator[tuple[dict[str, str], float]]:
    """Each child of a counter: its labels and its count, as /metrics shows them."""
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                yield sample.labels, sample.value


def _total(counter: Counter, **labels: str) -> int:
    """A counter's total over the children whose labels match ``labels``."""
    return int(
        sum(
            value
            for found, value in _counts(counter)
            if all(found.get(k) == v for k, v in labels.items())
        )
    )


def rss_bytes() -> int:
    """Resident memory now, from /proc; where there is none, the peak getrusage reports."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return pages * os.sysconf("SC_PAGE_SIZE")


def _version() -> str:
    try:
        return importlib.metadata.version("edge-agent")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
