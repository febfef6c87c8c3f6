"""The MQTT source: one persistent session, group commit to the spool, PUBACK after commit."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from dataclasses import dataclass

import aiomqtt
import paho.mqtt.client as paho
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import MQTTSection
from agent.deadletter import DeadLetters, payload_record
from agent.logs import RateLimited
from agent.parse.clock import IngestClock
from agent.parse.payload import MappingRules, PayloadError, map_payload
from agent.source.ack import Intake, Received, attach
from agent.source.redelivery import RedeliveryGuard, digest
from agent.spool.store import Records, Spool
from agent.status.metrics import Metrics

log = structlog.get_logger("edge_agent.source")

BLOCKED_RETRY = 0.5


@dataclass(frozen=True, slots=True)
class Route:
    rules: MappingRules
    qos: int
    label: str


class MqttSource:
    def __init__(
        self,
        cfg: MQTTSection,
        routes: list[Route],
        spool: Spool,
        clock: IngestClock,
        guard: RedeliveryGuard,
        dead_letters: DeadLetters,
        metrics: Metrics,
        max_commit_batch: int,
    ) -> None:
        self.cfg = cfg
        self.routes = routes
        self.spool = spool
        self.clock = clock
        self.guard = guard
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.max_commit_batch = max_commit_batch
        self.connected = False
        self.blocked = False
        self._buffer: list[Received] = []
        self._wake = asyncio.Event()
        self._bad_log = RateLimited()
        self._received: dict[str, int] = {}
        self._intake: Intake | None = None
        self._barrier: asyncio.Task[None] | None = None
        self._barrier_topic = f"edge-agent/barrier/{cfg.client_id}"

    def _deliver(self, message: Received) -> None:
        self._buffer.append(message)
        self._wake.set()
        # Not before SUBACK: a paused reader could not read it. Until our first PUBACK the
        # broker's own flow control holds (receive_maximum).
        if self.connected and len(self._buffer) >= self.cfg.receive_maximum and self._intake:
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
            tls_context=self._tls_context() if cfg.use_tls else None,
            tls_insecure=cfg.tls.insecure if cfg.use_tls else None,
        )

    def _tls_context(self) -> ssl.SSLContext:
        tls = self.cfg.tls
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        if tls.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _session(self, stop: asyncio.Event) -> None:
        connection = await self.spool.next_connection()
        self.guard.start_connection(connection, await self.spool.load_unacked())
        self._buffer.clear()
        client = self._client()
        intake = self._intake = attach(client, self._deliver)
        async with client:
            for route in self.routes:
                await client.subscribe(route.rules.template.filter, qos=route.qos)
            # Connected means subscribed: on a new session, nothing published earlier is queued.
            self.connected = True
            self.metrics.mqtt_connected.set(1)
            self.metrics.mqtt_connects.labels("ok").inc()
            log.info("mqtt_connected", url=self.cfg.url, client_id=self.cfg.client_id)
            watch = asyncio.create_task(_until_disconnected(client))
            stopping = asyncio.create_task(stop.wait())
            try:
                await self._commit_loop(client, intake, watch, stopping)
            finally:
                watch.cancel()
                stopping.cancel()
                if self._barrier is not None:
                    self._barrier.cancel()
                self._intake = None
            if watch.done() and not watch.cancelled() and watch.exception():
                raise aiomqtt.MqttError(str(watch.exception()))

    async def _commit_loop(
        self,
        client: aiomqtt.Client,
        intake: Intake,
        watch: asyncio.Task[None],
        stopping: asyncio.Task[bool],
    ) -> None:
        """Group commit: everything that arrived during the last commit goes into the next."""
        while True:
            if not self._buffer:
                if watch.done() or stopping.done():
                    return
                waker = asyncio.create_task(self._wake.wait())
                await asyncio.wait((waker, watch, stopping), return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                self._wake.clear()
                continue
            if watch.done():
                # The session is gone: these messages cannot be acknowledged on it and the broker
                # will redeliver them; the new connection stores them then.
                self._buffer.clear()
                return
            batch = self._buffer[: self.max_commit_batch]
            del self._buffer[: self.max_commit_batch]
            if len(self._buffer) < self.cfg.receive_maximum:
                intake.resume()
            await self._commit(batch, intake, watch)
            if not watch.done():
                self._start_barrier(client)
            if stopping.done():
                # Intake stops here: whatever arrives now stays unacknowledged at the broker.
                return

    async def _commit(
        self, batch: list[Received], intake: Intake, watch: asyncio.Task[None]
    ) -> None:
        lines: list[str] = []
        new: list[tuple[int, bytes]] = []
        bad: list[dict[str, object]] = []
        redelivered = 0
        for topic, payload, mid, qos, dup in batch:
            if qos:
                d = digest(topic, payload)
                if self.guard.is_redelivery(mid, dup, d):
                    redelivered += 1
                    continue
                new.append((mid, d))
            self._map(topic, payload, lines, bad)
        if bad:
            await asyncio.to_thread(self.dead_letters.write, bad)
        began = time.perf_counter()
        settled, purge_before = self.guard.take_settled()
        records = Records(self.guard.connection, self.guard.next_commit, new, settled, purge_before)
        while True:
            result = await self.spool.ingest(
                "raw", lines, records=records, clock_floor=self.clock.last
            )
            for drop in result.drops:
                self.metrics.dropped.labels(drop.reason).inc(drop.lines)
                log.warning(
                    "spool_dropped", stream=drop.stream, reason=drop.reason, lines=drop.lines
                )
            if result.committed:
                break
            self.blocked = True
            self.metrics.intake_blocked.set(1)
            if self._bad_log.allow("blocked") is not None:
                log.warning("intake_blocked", reason=result.blocked_reason)
            await asyncio.sleep(BLOCKED_RETRY)
            if watch.done():
                return
        self.guard.committed(records.commit)
        self.blocked = False
        self.metrics.intake_blocked.set(0)
        self.metrics.commit_seconds.observe(time.perf_counter() - began)
        self.metrics.committed.labels("raw").inc(len(lines))
        self.metrics.redeliveries.inc(redelivered)
        for label, count in self._received.items():
            self.metrics.received.labels(label).inc(count)
        self._received.clear()
        if watch.done():
            return
        intake.ack_all([message.mid for message in batch if message.qos])

    def _start_barrier(self, client: aiomqtt.Client) -> None:
        """Prove that the broker has processed the PUBACKs sent so far, so their redelivery
        records can be erased: an UNSUBSCRIBE of a filter we never use, queued behind them on
        the same connection, is answered only after the broker has read everything before it."""
        if self._barrier is not None and not self._barrier.done():
            return
        through = self.guard.begin_barrier()
        if through is not None:
            self._barrier = asyncio.create_task(self._settle(client, through))

    async def _settle(self, client: aiomqtt.Client, through: int) -> None:
        try:
            await client.unsubscribe(self._barrier_topic, timeout=30)
        except aiomqtt.MqttError:
            self.guard.barrier_failed()
            return
        self.guard.end_barrier(through)

    def _map(
        self, topic: str, payload: bytes, lines: list[str], bad: list[dict[str, object]]
    ) -> None:
        single = len(self.routes) == 1
        for route in self.routes:
            if not single and route.rules.template.match(topic) is None:
                continue
            self._received[route.label] = self._received.get(route.label, 0) + 1
            try:
                lines.extend(map_payload(route.rules, topic, payload, self.clock))
            except PayloadError as exc:
                self._reject(topic, payload, exc.reason, str(exc), bad)
            return
        self._reject(topic, payload, "no_subscription", "no subscription template matches", bad)

    def _reject(
        self, topic: str, payload: bytes, reason: str, error: str, bad: list[dict[str, object]]
    ) -> None:
        self.metrics.dropped.labels("malformed").inc()
        bad.append(payload_record(topic, payload, reason, error))
        suppressed = self._bad_log.allow(reason)
        if suppressed is not None:
            log.warning(
                "payload_rejected",
                topic=topic,
                reason=reason,
                error=error,
                suppressed_since_last=suppressed,
            )


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """aiomqtt's message iterator raises when the session drops; messages themselves are taken
    by the ack shim, so this only watches the connection."""
    async for _ in client.messages:
        pass
