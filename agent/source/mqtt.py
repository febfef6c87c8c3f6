"""The MQTT source: one persistent session, group commit to the spool, PUBACK after commit.

What can stop intake is decided here, in two kinds. One message that fails (mapping.py) is set
aside and acknowledged. The spool or the disk failing (full, read-only, a dead-letter file that
cannot be written) blocks the commit: nothing is acknowledged, the broker keeps the messages, and
the commit is retried until it lands, the session drops or the agent stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import ssl
import time
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.clock import hold
from agent.clock.watch import ClockWatch
from agent.config import MQTTSection
from agent.deadletter import DeadLetters, held_record
from agent.logs import RateLimited
from agent.source.ack import Intake, Received, attach
from agent.source.mapping import Mapper, Prepared
from agent.source.redelivery import RedeliveryGuard, digest
from agent.spool.store import Body, Records, Spool
from agent.status.metrics import Metrics

log = structlog.get_logger("edge_agent.source")

BLOCKED_RETRY = 0.5
# How often a barrier settles the redelivery records of the PUBACKs sent: its cost (an
# UNSUBSCRIBE round trip and a delete) is paid per second, not per commit.
BARRIER_INTERVAL = 1.0
# MQTT 5 Maximum Packet Size, as a multiple of max_payload: the broker discards anything larger
# instead of sending it, so one huge publish cannot exhaust a small gateway's memory.
PACKET_SIZE_FACTOR = 16
MQTT_MAX_PACKET = 268_435_455


class MqttSource:
    def __init__(
        self,
        cfg: MQTTSection,
        mapper: Mapper,
        spool: Spool,
        clock_watch: ClockWatch,
        guard: RedeliveryGuard,
        dead_letters: DeadLetters,
        metrics: Metrics,
        max_commit_batch: int,
        commit_interval: float,
    ) -> None:
        self.cfg = cfg
        self.mapper = mapper
        self.spool = spool
        self.clock_watch = clock_watch
        self.guard = guard
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.max_commit_batch = max_commit_batch
        self.commit_interval = commit_interval
        # Commit early once this many wait, so the broker's window (receive_maximum) never fills
        # while a commit lingers, whatever the rate.
        self._enough = max(1, min(max_commit_batch, cfg.receive_maximum // 2))
        self.connected = False
        self.blocked = False
        self._buffer: list[Received] = []
        self._ready = asyncio.Event()
        self._first_at = 0.0
        self._rate = 0.0  # messages per second over the last batch, for the reader's rests
        self._timer: asyncio.TimerHandle | None = None
        self._blocked_log = RateLimited()
        self._intake: Intake | None = None
        self._barrier_topic = f"edge-agent/barrier/{cfg.client_id}"

    def kick(self) -> None:
        """Wake the commit loop (the clock became trusted: held readings are to be placed)."""
        self._ready.set()

    def _deliver(self, message: Received) -> None:
        """Called by the socket reader for every message: kept to a few operations. The commit
        loop wakes when the first message of a batch has lingered ``commit_interval``, or once
        enough are waiting, not once per message."""
        buffer = self._buffer
        buffer.append(message)
        waiting = len(buffer)
        if waiting == 1:
            self._first_at = time.monotonic()
            self._timer = asyncio.get_running_loop().call_later(
                self.commit_interval, self._ready.set
            )
        if waiting >= self._enough:
            self._ready.set()
        # Not before SUBACK: a paused reader could not read it. Until our first PUBACK the
        # broker's own flow control holds (receive_maximum).
        if self.connected and waiting >= self.cfg.receive_maximum and self._intake:
            self._intake.pause()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, consume, reconnect with capped, jittered backoff, until ``stop`` is set."""
        delay = self.cfg.reconnect_min
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self._session(stop)
            except aiomqtt.MqttError as exc:
                self.metrics.mqtt_connects.labels("error").inc()
                log.warning("mqtt_disconnected", error=str(exc), retry_in=round(delay, 1))
            except sqlite3.Error as exc:  # a new session needs one spool write: the disk said no
                log.error("spool_unwritable", error=str(exc), retry_in=round(delay, 1))
            finally:
                self.connected = False
                self.metrics.mqtt_connected.set(0)
            if stop.is_set():
                break
            if time.monotonic() - started > 30:
                delay = self.cfg.reconnect_min
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), random.uniform(0.5, 1.0) * delay)
            delay = min(self.cfg.reconnect_max, delay * 2)

    def _client(self) -> aiomqtt.Client:
        cfg = self.cfg
        v5 = cfg.protocol == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = int(cfg.session_expiry)
            properties.ReceiveMaximum = cfg.receive_maximum
            properties.MaximumPacketSize = min(
                MQTT_MAX_PACKET, cfg.max_payload * PACKET_SIZE_FACTOR + 65_536
            )
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=cfg.client_id,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else False,
            # paho refuses clean_start with 3.1.1, where clean_session=False does the job.
            clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=int(cfg.keepalive),
            properties=properties,
            tls_context=tls_context(cfg) if cfg.use_tls else None,
            tls_insecure=cfg.tls.insecure if cfg.use_tls else None,
        )

    async def _session(self, stop: asyncio.Event) -> None:
        connection = await self.spool.next_connection()
        self.guard.start_connection(connection, await self.spool.load_unacked())
        self._buffer.clear()
        client = self._client()
        intake = self._intake = attach(client, self._deliver, self._rest_for)
        async with client:
            for route in self.mapper.routes:
                await client.subscribe(route.rules.template.filter, qos=route.qos)
            # Connected means subscribed: on a new session, nothing published earlier is queued.
            self.connected = True
            self.metrics.mqtt_connected.set(1)
            self.metrics.mqtt_connects.labels("ok").inc()
            log.info("mqtt_connected", url=self.cfg.url, client_id=self.cfg.client_id)
            gone = asyncio.create_task(_until_disconnected(client))
            stopping = asyncio.create_task(stop.wait())
            for ending in (gone, stopping):
                ending.add_done_callback(lambda _: self._ready.set())
            barriers = asyncio.create_task(self._barriers(client))
            try:
                await self._commit_loop(intake, gone, stopping)
            finally:
                gone.cancel()
                stopping.cancel()
                barriers.cancel()
                self._intake = None
            if gone.done() and not gone.cancelled() and gone.exception():
                raise aiomqtt.MqttError(str(gone.exception()))

    async def _commit_loop(
        self, intake: Intake, gone: asyncio.Task[None], stopping: asyncio.Task[bool]
    ) -> None:
        """Group commit that lingers: a commit (and its fsync) costs the same for one message as
        for a thousand, so a steady stream is committed every ``commit_interval``, or sooner
        once enough messages wait. PUBACKs go out only after the commit."""
        while True:
            if self._held_to_place() and not await self._place_held(gone, stopping):
                return
            buffer = self._buffer
            if gone.done():
                # The session is gone: these messages cannot be acknowledged on it and the broker
                # will redeliver them; the new connection stores them then.
                buffer.clear()
                self._cancel_timer()
                return
            if not buffer and stopping.done():
                return
            lingering = time.monotonic() < self._first_at + self.commit_interval
            if not buffer or (len(buffer) < self._enough and lingering and not stopping.done()):
                await self._ready.wait()
                self._ready.clear()
                continue
            intake.drain()  # what piled up in the socket while the reader rested belongs here
            self._rate = len(buffer) / max(time.monotonic() - self._first_at, 0.001)
            batch = buffer[: self.max_commit_batch]
            del buffer[: self.max_commit_batch]
            self._cancel_timer()
            intake.wake()
            if buffer:  # a burst: the rest is due at once
                self._first_at = -self.commit_interval
                self._ready.set()
            if len(buffer) < self.cfg.receive_maximum:
                intake.resume()
            if not await self._commit(batch, intake, gone, stopping):
                return
            if stopping.done():
                # Intake stops here: whatever arrives now stays unacknowledged at the broker.
                return

    def _rest_for(self) -> float:
        """How long the socket reader may rest after a read: until the commit is due, but short
        enough at a high rate that what piles up stays a fraction of ``_enough`` (and so of the
        broker's window)."""
        buffer = self._buffer
        if not buffer:
            return 0.0
        now = time.monotonic()
        due = self._first_at + self.commit_interval - now
        if due <= 0 or len(buffer) >= self._enough:
            return 0.0
        rate = max(len(buffer) / max(now - self._first_at, 0.001), self._rate)
        return min(due, self.commit_interval / 4, self._enough / 4 / rate)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _prepare(self, batch: list[Received]) -> tuple[Prepared, list[tuple[int, bytes]], int]:
        """Map the batch; the redelivery records of its QoS 1 messages; how many were
        redeliveries of messages already stored."""
        self.clock_watch.look()  # a step must be seen before anything is stamped with it
        self.mapper.clock.holding = not self.clock_watch.trust.trusted
        out = Prepared()
        new: list[tuple[int, bytes]] = []
        redelivered = 0
        for topic, payload, mid, qos, dup in batch:
            if qos:
                d = digest(topic, payload)
                new.append((mid, d))  # a redelivery too: it is acknowledged again
                if self.guard.is_redelivery(mid, dup, d):
                    redelivered += 1
                    continue
            self.mapper.add(topic, payload, out)
        return out, new, redelivered

    async def _commit(
        self,
        batch: list[Received],
        intake: Intake,
        gone: asyncio.Task[None],
        stopping: asyncio.Task[bool],
    ) -> bool:
        """Store and acknowledge one batch; False if the session dropped or the agent stopped
        while the disk refused it (then nothing is acknowledged)."""
        out, new, redelivered = self._prepare(batch)
        bodies = {"raw": Body(b"\n".join(out.raw), out.raw_lines)}
        if out.held:
            stream = hold.stream_of(self.clock_watch.trust.boot)
            bodies[stream] = Body(b"\n".join(out.held), len(out.held))
        began = time.perf_counter()
        settled, purge_before = self.guard.take_settled()
        records = Records(self.guard.connection, self.guard.next_commit, new, settled, purge_before)
        floor = None if self.mapper.clock.holding else self.mapper.clock.last
        if not await self._persist(bodies, records, floor, out.bad, gone, stopping):
            return False
        self.guard.committed(records.commit)
        self.metrics.commit_seconds.observe(time.perf_counter() - began)
        for stream, body in bodies.items():
            self.metrics.committed.labels(hold.label(stream)).inc(body.lines)
        self.metrics.redeliveries.inc(redelivered)
        for label, count in out.received.items():
            self.metrics.received.labels(label).inc(count)
        for reason, count in out.rejected.items():
            self.metrics.rejected.labels(reason).inc(count)
            self.metrics.dropped.labels("malformed").inc(count)
        if not gone.done():
            intake.ack_all([message.mid for message in batch if message.qos])
        return True

    async def _persist(
        self,
        bodies: dict[str, Body],
        records: Records | None,
        floor: int | None,
        bad: list[dict[str, Any]],
        gone: asyncio.Task[None],
        stopping: asyncio.Task[bool],
    ) -> bool:
        """Dead letters first (fsynced: a crash after the commit must not lose them), then the
        commit; each retried while the disk refuses it."""
        while bad:
            try:
                await asyncio.to_thread(self.dead_letters.write, bad)
                break
            except OSError as exc:
                self.metrics.dead_letter_errors.labels(self.dead_letters.path.name).inc()
                if not await self._blocked(
                    f"dead letters cannot be written: {exc}", gone, stopping
                ):
                    return False
        while True:
            result = await self.spool.commit(bodies, records=records, clock_floor=floor)
            for drop in result.drops:
                self.metrics.spool_dropped(drop.stream, drop.reason, drop.lines)
                log.warning(
                    "spool_dropped", stream=drop.stream, reason=drop.reason, lines=drop.lines
                )
            if result.committed:
                break
            if not await self._blocked(result.blocked_reason or "", gone, stopping):
                return False
        if self.blocked:
            log.info("intake_resumed")
        self.blocked = False
        self.metrics.intake_blocked.set(0)
        return True

    async def _blocked(
        self, reason: str, gone: asyncio.Task[None], stopping: asyncio.Task[bool]
    ) -> bool:
        """Intake pauses: wait a moment; False once the session is gone or the agent stops."""
        self.blocked = True
        self.metrics.intake_blocked.set(1)
        suppressed = self._blocked_log.allow("blocked")
        if suppressed is not None:
            log.warning("intake_blocked", reason=reason, suppressed_since_last=suppressed)
        await asyncio.wait((gone, stopping), timeout=BLOCKED_RETRY)
        return not (gone.done() or stopping.done())

    # -- readings held for the clock -------------------------------------------------------------

    def _held_to_place(self) -> bool:
        return self.clock_watch.trust.trusted and bool(self._held_streams())

    def _held_streams(self) -> list[str]:
        """Held readings; the telemetry stage places its own held points."""
        return hold.placed_into(self.spool.streams_like(hold.PREFIX), "raw")

    async def _place_held(self, gone: asyncio.Task[None], stopping: asyncio.Task[bool]) -> bool:
        """Move the held readings into the raw stream, on the wall clock, before anything stamped
        by the trusted clock is committed: so they reach the aggregator in their own order."""
        trust = self.clock_watch.trust
        clock = self.mapper.clock
        placed = rejected = 0
        for stream in self._held_streams():
            offset = trust.offset if hold.boot_of(stream) == trust.boot else None
            while not stopping.done() and (chunk := await self.spool.oldest_chunk(stream)):
                cid, body = chunk
                result = hold.place(body, offset, time.time_ns(), clock.max_future, clock.max_past)
                bad = [
                    held_record(line.decode(), reason, error)
                    for line, reason, error in result.rejected
                ]
                moved = Body(b"\n".join(result.lines), len(result.lines))
                if not await self._move_held(stream, cid, moved, bad, gone, stopping):
                    return False
                placed += len(result.lines)
                rejected += len(result.rejected)
                for _, reason, _ in result.rejected:
                    self.metrics.rejected.labels(reason).inc()
                    self.metrics.dropped.labels("malformed").inc()
        self.metrics.held_placed.inc(placed)
        self.metrics.committed.labels("raw").inc(placed)
        if placed or rejected:
            log.info(
                "held_readings_placed",
                placed=placed,
                set_aside=rejected,
                confirmed_by=trust.confirmed_by,
            )
        return not stopping.done()

    async def _move_held(
        self,
        stream: str,
        cid: int,
        moved: Body,
        bad: list[dict[str, Any]],
        gone: asyncio.Task[None],
        stopping: asyncio.Task[bool],
    ) -> bool:
        while True:
            try:
                if bad:
                    await asyncio.to_thread(self.dead_letters.write, bad)
                    bad = []
                await self.spool.move_chunk(stream, cid, "raw", moved)
                return True
            except (OSError, sqlite3.Error) as exc:
                if not await self._blocked(
                    f"held readings cannot be placed: {exc}", gone, stopping
                ):
                    return False

    async def _barriers(self, client: aiomqtt.Client) -> None:
        """Prove that the broker has processed the PUBACKs sent so far, so their redelivery
        records can be erased: an UNSUBSCRIBE of a filter we never use, queued behind them on
        the same connection, is answered only after the broker has read everything before it."""
        while True:
            await asyncio.sleep(BARRIER_INTERVAL)
            through = self.guard.begin_barrier()
            if through is None:
                continue
            try:
                await client.unsubscribe(self._barrier_topic, timeout=30)
            except aiomqtt.MqttError:
                self.guard.barrier_failed()
                continue
            self.guard.end_barrier(through)


def tls_context(cfg: MQTTSection) -> ssl.SSLContext:
    """The [mqtt.tls] settings as a context, for the source and for ``edge-agent doctor``."""
    tls = cfg.tls
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """aiomqtt's message iterator raises when the session drops; messages themselves are taken
    by the ack shim, so this only watches the connection."""
    async for _ in client.messages:
        pass
