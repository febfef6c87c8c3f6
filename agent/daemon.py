"""Wires the pipeline together and runs it until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import signal
import stat
import time
from pathlib import Path
from typing import IO

import aiohttp
import structlog

from agent.aggregate.aggregator import CONSUMER as AGGREGATOR
from agent.aggregate.aggregator import SOURCE as AGGREGATOR_SOURCE
from agent.aggregate.aggregator import Aggregator
from agent.clock import hold, kernel
from agent.clock.trust import NS, ClockTrust
from agent.clock.watch import ClockWatch
from agent.config import Config
from agent.deadletter import DeadLetters
from agent.forward.http import Writer
from agent.forward.output import Output
from agent.parse.clock import IngestClock
from agent.parse.payload import MappingRules
from agent.parse.topic import TopicTemplate
from agent.redact import Redactor
from agent.source.mapping import Mapper, Route
from agent.source.mqtt import MqttSource
from agent.source.redelivery import RedeliveryGuard
from agent.spool.budget import Budget
from agent.spool.store import Spool
from agent.status import server
from agent.status.metrics import TELEMETRY, Metrics
from agent.status.notify import Notifier
from agent.status.reporter import Reporter
from agent.status.supervisor import OutputState, Supervisor, status_line

log = structlog.get_logger("edge_agent")

STATS_INTERVAL = 2.0
# The spool and the dead letters hold the plant's readings and raw payloads: the agent's user only.
PRIVATE_UMASK = 0o077


class DataDirLocked(Exception):
    pass


def make_private(data_dir: Path) -> None:
    """Create the data dir as 0700, and take group and other access away from it and from
    everything in it that an older version or a looser umask left readable. Symbolic links
    inside are left alone: chmod would change what they point to."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(str(data_dir), os.stat(data_dir).st_mode, 0o700)
    for root, dirs, files in os.walk(data_dir):
        for names, mode in ((dirs, 0o700), (files, 0o600)):
            for name in names:
                path = os.path.join(root, name)
                st_mode = os.lstat(path).st_mode
                if not stat.S_ISLNK(st_mode):
                    _tighten(path, st_mode, mode)


def _tighten(path: str, st_mode: int, mode: int) -> None:
    if not st_mode & 0o077:
        return
    try:
        os.chmod(path, mode)
    except OSError as exc:
        log.warning("data_dir_not_private", path=path, error=exc.strerror)


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Two agents on one spool would acknowledge each other's messages: refuse the second."""
    handle = (data_dir / "agent.lock").open("a")  # truncated only once won: the pid stays right
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise DataDirLocked(f"{data_dir} is in use by another edge-agent process") from exc
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def tune_gc() -> None:
    """Every MQTT message makes paho allocate a dozen containers; with the default thresholds
    the collector ran a pass every few dozen messages and took a third of the CPU (bench:
    7,900 -> 11,200 readings/s). Long-lived start-up objects are frozen out of its way."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)


def routes_for(cfg: Config) -> list[Route]:
    routes = []
    for sub in cfg.mqtt.subscriptions:
        rules = MappingRules(
            template=TopicTemplate(sub.topic),
            format=sub.format,
            measurement=sub.measurement,
            field=sub.field,
            tags={**cfg.agent.tags, **sub.tags},
            precision=sub.precision,
            json_time_key=sub.json_time_key,
            json_tag_keys=frozenset(sub.json_tag_keys),
            override_tags=sub.override_tags,
        )
        routes.append(Route(rules, sub.qos, sub.topic))
    return routes


class Agent:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.metrics.spool_budget.set(cfg.spool.max_size)
        data = cfg.agent.data_dir
        self.spool = Spool(
            data / "spool.db",
            Budget(
                cfg.spool.max_size, cfg.spool.max_age, cfg.spool.min_free_disk, cfg.spool.when_full
            ),
            cfg.spool.synchronous,
        )
        self.outputs: list[Output] = []
        self.source: MqttSource | None = None
        self.trust = ClockTrust(cfg.clock.trust, cfg.clock.max_skew, kernel.boot_id())
        self.stop = asyncio.Event()
        self.failed = False
        self.redactor = Redactor(cfg.secrets())
        self.notifier = Notifier()
        self.backlogs: dict[str, int] = {}  # lines each output has yet to send, by _stats_loop
        self.started = time.monotonic()

    def problems(self) -> dict[str, str]:
        found: dict[str, str] = {}
        if self.source is None or not self.source.connected:
            found["mqtt"] = f"not connected to {self.cfg.mqtt.url}"
        for output in self.outputs:
            if not output.healthy:
                found[f"output:{output.name}"] = output.problem
            if output.disk_problem:
                found[f"output:{output.name}:disk"] = output.disk_problem
        if self.source is not None and self.source.blocked:
            found["spool"] = "intake blocked by the spool budget or a disk error"
        if not self.trust.trusted:
            held = self._held()
            found["clock"] = f"{self.trust.problem}; {held} readings held until it is confirmed"
        return found

    def _held(self) -> int:
        """Readings held for the clock (the agent's own held telemetry is not counted)."""
        streams = hold.placed_into(self.spool.streams_like(hold.PREFIX), "raw")
        return sum(self.spool.stats[s].lines for s in streams)

    def status_line(self) -> str:
        """For ``systemctl status``: what /readyz says, in one line."""
        return status_line(
            self._mqtt_up(),
            [OutputState(o.name, self.backlogs.get(o.name, 0), o.healthy) for o in self.outputs],
            self.source is not None and self.source.blocked,
            None if self.trust.trusted else self._held(),
        )

    async def run(self) -> int:
        cfg = self.cfg
        data = cfg.agent.data_dir
        await self.spool.open()
        consumers: dict[str, list[str]] = {o.name: list(o.streams) for o in cfg.outputs}
        if cfg.aggregations:
            consumers[AGGREGATOR] = [AGGREGATOR_SOURCE]
        forgotten = await self.spool.register(consumers)
        if forgotten:
            log.warning(
                "cursors_forgotten",
                consumers=forgotten,
                note="these outputs are no longer configured",
            )
        clock = IngestClock(
            self.spool.clock_floor,
            max_future=round(cfg.clock.max_future * NS),
            max_past=round(cfg.clock.max_past * NS),
        )
        aggregator = Aggregator(cfg.aggregations, self.spool, self.metrics, self._mqtt_up)
        await aggregator.load()  # also forgets the windows of aggregations no longer configured
        connector = aiohttp.TCPConnector(limit=sum(o.max_in_flight for o in cfg.outputs) + 4)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        for out_cfg in cfg.outputs:
            output = Output(
                out_cfg,
                self.spool,
                Writer(out_cfg, session),
                DeadLetters(data / "dead-letters" / f"{out_cfg.name}.jsonl"),
                self.metrics,
            )
            self.outputs.append(output)
        clock_watch = ClockWatch(
            self.trust,
            self.spool,
            self.metrics,
            [(o.name, o.server_time) for o in self.outputs],
            lambda: self.source.kick() if self.source is not None else None,
        )
        await clock_watch.start()
        self.source = MqttSource(
            cfg.mqtt,
            Mapper(routes_for(cfg), clock, cfg.mqtt.max_payload),
            self.spool,
            clock_watch,
            RedeliveryGuard(),
            DeadLetters(data / "dead-letters" / "ingest.jsonl"),
            self.metrics,
            cfg.spool.max_commit_batch,
            cfg.spool.commit_interval,
        )
        status = None
        if cfg.status.enabled:
            host, port = cfg.status.host_port
            app = server.build_app(self.metrics, self.problems, self.redactor)
            status = server.StatusServer(app, host, port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        # Written only if an output reads it: a stream nobody reads would only fill the spool.
        telemetry = bool(cfg.telemetry.interval) and any(
            TELEMETRY in o.streams for o in cfg.outputs
        )
        log.info(
            "agent_started",
            name=cfg.agent.name,
            data_dir=str(data),
            outputs=[o.name for o in cfg.outputs],
            telemetry_interval=cfg.telemetry.interval if telemetry else 0,
            pid=os.getpid(),
        )
        tune_gc()
        source_task = asyncio.create_task(self.source.run(self.stop), name="mqtt source")
        stage_tasks = [
            asyncio.create_task(o.run(self.stop), name=f"output {o.name}") for o in self.outputs
        ]
        if cfg.aggregations:
            stage_tasks.append(asyncio.create_task(aggregator.run(self.stop), name="aggregator"))
        stage_tasks.append(asyncio.create_task(clock_watch.run(self.stop), name="clock"))
        if telemetry:
            reporter = Reporter(
                cfg,
                self.spool,
                self.metrics,
                clock_watch,
                self.outputs,
                self._mqtt_up,
                self.started,
            )
            stage_tasks.append(asyncio.create_task(reporter.run(self.stop), name="telemetry"))
        stats_task = asyncio.create_task(self._stats_loop(), name="stats")
        self.notifier.ready(self.status_line())
        supervisor = Supervisor(self.notifier, self.spool.probe, self.status_line)
        supervisor_task = asyncio.create_task(supervisor.run(self.stop), name="supervisor")
        for task in (source_task, *stage_tasks, stats_task, supervisor_task):
            task.add_done_callback(self._on_task_done)
        await self.stop.wait()
        self.notifier.stopping(f"stopping: outputs drain for up to {cfg.agent.shutdown_grace:g}s")
        began = time.monotonic()
        await asyncio.gather(source_task, *stage_tasks, supervisor_task, return_exceptions=True)
        remaining = max(0.0, cfg.agent.shutdown_grace - (time.monotonic() - began))
        cut = sum(await asyncio.gather(*(o.drain(remaining) for o in self.outputs)))
        stats_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stats_task
        await session.close()
        if status is not None:
            status.close()
        await self.spool.close()
        self.notifier.close()
        log.info(
            "agent_stopped",
            writes_cut_at_grace=cut,
            note="unsent lines stay in the spool" if cut else "",
        )
        return 1 if self.failed else 0

    def _mqtt_up(self) -> bool:
        return self.source is not None and self.source.connected

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        """A stage that dies of a bug stops the whole agent with a non-zero exit, so systemd
        restarts it from the spool, instead of leaving a process that looks alive."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.critical("stage_crashed", stage=task.get_name(), exc_info=exc)
        self.failed = True
        self.stop.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("stopping", signal=sig.name)
        self.stop.set()

    async def _stats_loop(self) -> None:
        while True:
            by_label: dict[str, tuple[int, int, float]] = {}
            for stream, stats in self.spool.stats.items():
                label = hold.label(stream)
                lines, size, age = by_label.get(label, (0, 0, 0.0))
                by_label[label] = (
                    lines + stats.lines,
                    size + stats.bytes,
                    max(age, self.spool.oldest_age(stream)),
                )
            for label, (lines, size, age) in by_label.items():
                self.metrics.spool_lines.labels(label).set(lines)
                self.metrics.spool_bytes.labels(label).set(size)
                self.metrics.spool_oldest_age.labels(label).set(age)
            for output in self.outputs:
                total = 0
                for stream in output.cfg.streams:
                    pos = await self.spool.cursor(output.name, stream)
                    backlog = await self.spool.backlog(stream, pos)
                    self.metrics.backlog.labels(output.name, stream).set(backlog)
                    total += backlog
                self.backlogs[output.name] = total
            await asyncio.sleep(STATS_INTERVAL)


async def run(cfg: Config) -> int:
    os.umask(PRIVATE_UMASK)
    make_private(cfg.agent.data_dir)
    handle = lock_data_dir(cfg.agent.data_dir)
    try:
        return await Agent(cfg).run()
    finally:
        handle.close()
