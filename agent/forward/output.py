"""One configured output: read batches from its cursors, write them, advance only on success.

Each stream has its own dispatcher (read head, pending batches, durable cursor); the cursor of a
stream moves over the longest prefix of its batches that have all succeeded, so a crash can only
resend (the same points, which the server upserts), never skip. Every attempt of the output
passes one priority gate (gate.py): telemetry, then aggregates, then raw, older batches before
newer, and one probe at a time while the server is failing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from agent.config import OutputSection
from agent.deadletter import DeadLetters, line_record
from agent.forward.bisect import Answer, Refused, deliver, probe_ends
from agent.forward.classify import Action, Outcome
from agent.forward.gate import Gate, Priority, full_jitter
from agent.forward.http import Writer, encode_batch, encode_body
from agent.logs import RateLimited
from agent.spool.store import Batch, Position, Spool
from agent.status.metrics import Metrics

log = structlog.get_logger("edge_agent.output")

# After an outage the gateway's own health (a few points per interval) and the dashboards'
# summaries are current within seconds; raw history backfills.
_SEND_ORDER = ("telemetry", "aggregates", "raw")
_RETRYABLE = (Action.RETRY, Action.THROTTLE, Action.CONFIG)
UNREACHABLE_PROBE = 1.0  # seconds between pings while the server gives no answer at all
DISK_RETRY = 2.0  # seconds between attempts at a dead-letter write the disk refused


@dataclass(slots=True)
class _Batch:
    end: Position
    done: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class _Stream:
    """One stream's dispatch state: its own pending limit, so a stream stuck retrying never
    keeps another from reading, and its own in-flight order for its cursor."""

    def __init__(self, name: str, pending: int) -> None:
        self.name = name
        self.rank = _SEND_ORDER.index(name)
        self.pending = asyncio.Semaphore(pending)
        self.inflight: deque[_Batch] = deque()
        self.cursor_lock = asyncio.Lock()
        self.dispatched = 0

    def next_priority(self) -> Priority:
        self.dispatched += 1
        return (self.rank, self.dispatched)


class Output:
    def __init__(
        self,
        cfg: OutputSection,
        spool: Spool,
        writer: Writer,
        dead_letters: DeadLetters,
        metrics: Metrics,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.spool = spool
        self.writer = writer
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.healthy = True
        self.problem = ""
        self.disk_problem = ""  # a dead-letter write the disk refuses, being retried
        self.last_success: float | None = None  # monotonic: its age survives wall-clock steps
        self._streams = [_Stream(s, cfg.max_in_flight) for s in cfg.streams]
        self._gate = Gate(cfg.max_in_flight, full_jitter(cfg.retry_max_backoff))
        self._disk_log = RateLimited(30.0)
        self._no_answer = False  # the last failure got no HTTP answer: probe with pings
        metrics.output_healthy.labels(self.name).set(1)

    # -- reading and dispatch --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch batches of every stream until ``stop``; the caller then calls ``drain``."""
        async with asyncio.TaskGroup() as group:
            for stream in self._streams:
                group.create_task(self._dispatch_stream(stream, stop))

    async def _dispatch_stream(self, stream: _Stream, stop: asyncio.Event) -> None:
        head = await self.spool.cursor(self.name, stream.name)
        partial_since: float | None = None
        while not stop.is_set():
            generation = self.spool.drop_generation
            appended = self.spool.appended.get(stream.name, 0)
            batch = await self.spool.read_batch(
                stream.name, head, self.cfg.batch_size, self.cfg.batch_bytes
            )
            if not batch.count:
                head = batch.end
                partial_since = None
                deadline = time.monotonic() + self.cfg.flush_interval
                await self._wait_for_data(stop, stream.name, appended, 1, deadline)
                continue
            if partial_since is None:
                partial_since = time.monotonic()
            full = batch.full
            deadline = partial_since + self.cfg.flush_interval
            if full or time.monotonic() >= deadline:
                if not await self._take_slot(stream.pending, stop):
                    return
                if self.spool.drop_generation != generation:
                    # The budget dropped chunks while this batch waited for a slot: its lines
                    # were counted as dropped, so read again rather than send them anyway.
                    stream.pending.release()
                    continue
                head = batch.end
                self.spool.read_heads[(self.name, stream.name)] = batch.end
                partial_since = None
                self._dispatch(stream, batch)
                continue
            missing = self.cfg.batch_size - batch.count
            await self._wait_for_data(stop, stream.name, appended, missing, deadline)

    async def _take_slot(self, slots: asyncio.Semaphore, stop: asyncio.Event) -> bool:
        """A free pending slot, or False once ``stop`` is set: with the server down every slot
        is held by a waiting batch, and shutdown must not wait for one to free up."""
        slot = asyncio.ensure_future(slots.acquire())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait((slot, stopper), return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if slot.done() and not slot.cancelled():
            if stop.is_set():
                slots.release()
                return False
            return True
        slot.cancel()
        return False

    async def _wait_for_data(
        self, stop: asyncio.Event, stream: str, baseline: int, missing: int, deadline: float
    ) -> None:
        """Sleep until the deadline, or until ``missing`` more lines were committed to ``stream``
        since the count was ``baseline`` (counted, not re-read: re-reading a growing partial
        batch on every commit is quadratic)."""
        timeout = deadline - time.monotonic()
        if timeout > 0 and not stop.is_set():
            await self.spool.wait_appended(stream, baseline + missing, stop, timeout)

    def _dispatch(self, stream: _Stream, read: Batch) -> None:
        batch = _Batch(read.end)
        stream.inflight.append(batch)
        priority = stream.next_priority()
        batch.task = asyncio.create_task(self._send_batch(stream, batch, read, priority))

    async def _send_batch(
        self, stream: _Stream, batch: _Batch, read: Batch, priority: Priority
    ) -> None:
        """The stored segments go out as they are (encode_batch); lines are decoded only if the
        server refuses the batch and it must be split."""
        began = time.perf_counter()
        refused: Refused = []
        try:
            body = encode_batch(read, self.cfg.gzip_level)
            answer = await self._post_until_answer(body, priority, read.lines, read.count > 1)
            if answer[0].action is Action.SUCCESS:
                self._sent(read.count)
            else:
                send = functools.partial(self._send_lines, priority)
                await deliver(read.lines(), send, refused, self._sent, answer)
        finally:
            stream.pending.release()
        for line, outcome in refused:
            await self._dead_letter(line, outcome)
        self.metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - began)
        batch.done = True
        await self._advance(stream)

    async def _advance(self, stream: _Stream) -> None:
        """Move the cursor over the finished prefix; the spool writes it with its next
        transaction (a full disk only delays it: the spool keeps it queued)."""
        async with stream.cursor_lock:
            last: Position | None = None
            while stream.inflight and stream.inflight[0].done:
                last = stream.inflight.popleft().end
            if last is not None:
                self.spool.advance(self.name, stream.name, last)

    async def drain(self, grace: float) -> int:
        """Let in-flight writes finish for up to ``grace`` seconds; cancel the rest (their lines
        stay behind the cursor and are sent after the restart). Returns how many were cut."""
        tasks = [
            b.task
            for s in self._streams
            for b in s.inflight
            if b.task is not None and not b.task.done()
        ]
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)

    # -- delivery --------------------------------------------------------------------------------

    async def _send_lines(self, priority: Priority, lines: list[bytes]) -> Answer:
        """These lines alone (a part of a refused batch), until the answer is final for them."""
        body = await encode_body(lines, self.cfg.gzip_level)
        return await self._post_until_answer(body, priority, lambda: lines, False)

    def _sent(self, count: int) -> None:
        self.metrics.lines_sent.labels(self.name).inc(count)

    async def _post_until_answer(
        self, body: bytes, priority: Priority, lines: Callable[[], list[bytes]], whole: bool
    ) -> Answer:
        """POST through the gate until the answer is final for these lines: success, split or
        bisect. Between attempts the batch waits at the gate, not on a timer of its own.
        ``whole``: a batch as read, of more than one line (see ``probe_ends``)."""
        while True:
            async with self._gate.turn(priority) as ticket:
                unanswered = await self._unreachable() if ticket.probe else None
                if unanswered is not None:
                    wait = self._gate.failed(ticket, self._wait_after(unanswered))
                    self._retrying(unanswered, wait)
                    continue
                outcome = await self._post(body)
                ends = None
                if outcome.action is Action.BISECT and whole:
                    ends = await probe_ends(lines(), outcome, self._post, self.cfg.gzip_level)
                    if ends.request_level:
                        outcome, ends = dataclasses.replace(outcome, action=Action.CONFIG), None
                if outcome.action not in _RETRYABLE:
                    self._gate.passed()
                    self._set_healthy()
                    if outcome.action is Action.SUCCESS:
                        self.last_success = time.monotonic()
                        self.metrics.last_success.labels(self.name).set(time.time())
                    return outcome, ends
                wait = self._gate.failed(ticket, self._wait_after(outcome))
            self._retrying(outcome, wait)

    async def _unreachable(self) -> Outcome | None:
        """Before a probe after answers that never came (refused, DNS, timeout): a ``/ping``,
        not a batch. Every ``UNREACHABLE_PROBE`` seconds, so the backlog starts within a
        couple of seconds of the link returning; a live server that fails (5xx, 429) still
        gets the backoff. None: the server answers, send the batch, and let the others go at
        once, all in flight: the backlog drains at full speed from the first moment."""
        if not self._no_answer:
            return None
        ping = await self.writer.ping()
        self.metrics.probes.labels(self.name, "answered" if ping.failed is None else "none").inc()
        if ping.failed is None:
            self._no_answer = False
            self._gate.passed()
        return ping.failed

    async def _post(self, body: bytes) -> Outcome:
        outcome = await self.writer.post(body)
        self.metrics.bytes_sent.labels(self.name).inc(len(body))
        self.metrics.requests.labels(self.name, outcome.label).inc()
        return outcome

    def _wait_after(self, outcome: Outcome) -> float | None:
        """The wait the config, the server or an unreachable server dictates (None leaves it to
        the backoff), and whether the next probe starts with a ping."""
        self._no_answer = outcome.status is None and outcome.action is Action.RETRY
        if outcome.action is Action.CONFIG:
            return self.cfg.config_error_retry
        if self._no_answer:
            return UNREACHABLE_PROBE
        return outcome.retry_after

    def _retrying(self, outcome: Outcome, wait: float) -> None:
        self.metrics.retries.labels(self.name).inc()
        if outcome.action is Action.CONFIG:
            self._set_unhealthy(outcome)
        failures = self._gate.failures
        if failures in (1, 2, 5) or failures % 20 == 0:
            log.warning(
                "write_retry",
                output=self.name,
                outcome=outcome.label,
                action=outcome.action.value,
                attempt=failures,
                retry_in=round(wait, 2),
                error=outcome.message[:300],
            )

    def _set_unhealthy(self, outcome: Outcome) -> None:
        check = "token, org and bucket" if self.cfg.api == "v2" else "username, password, database"
        problem = f"HTTP {outcome.status} from {self.writer.target.url}: check url, {check}"
        answer = {"server_said": outcome.message[:300]}
        if outcome.status is None:  # no HTTP answer: the TLS handshake failed, and says why
            problem, answer = outcome.message, {}
        elif outcome.status in (400, 422):
            problem = (
                f"HTTP {outcome.status} from {self.writer.target.url} for the whole request, "
                f"every line alone too ({outcome.message[:200]}): check url, {check}, and any "
                "proxy in between; nothing is set aside meanwhile"
            )
        if self.healthy:
            log.error(
                "output_config_error",
                output=self.name,
                problem=problem,
                **answer,
                note="nothing is dropped; retrying slowly",
            )
        self.healthy = False
        self.problem = problem
        self.metrics.output_healthy.labels(self.name).set(0)

    def _disk_problem(self, event: str, error: str) -> None:
        self.disk_problem = f"{event.replace('_', ' ')}: {error}"
        suppressed = self._disk_log.allow(event)
        if suppressed is not None:
            log.error(
                event,
                output=self.name,
                error=error,
                retry_in=DISK_RETRY,
                suppressed_since_last=suppressed,
                note="nothing is lost; retrying",
            )

    async def server_time(self) -> float | None:
        """The server's clock, for the clock watch. Until it confirms the wall clock, readings
        are held and no write reaches this output, so a failed TLS handshake is reported here."""
        ping = await self.writer.ping()
        if ping.failed is not None and ping.failed.action is Action.CONFIG:
            self._set_unhealthy(ping.failed)
        return ping.date

    def _set_healthy(self) -> None:
        if not self.healthy:
            log.info("output_recovered", output=self.name)
        self.healthy = True
        self.problem = ""
        self.metrics.output_healthy.labels(self.name).set(1)

    async def _dead_letter(self, line: bytes, outcome: Outcome) -> None:
        """The batch is not done, so its cursor does not move, until the record is on disk."""
        text = line.decode(errors="replace")
        record = line_record(text, outcome.status or 0, outcome.message[:1000])
        while True:
            try:
                await asyncio.to_thread(self.dead_letters.write, [record])
                break
            except OSError as exc:
                self.metrics.dead_letter_errors.labels(self.dead_letters.path.name).inc()
                self._disk_problem("dead_letter_write_failed", str(exc))
                await asyncio.sleep(DISK_RETRY)  # at stop, drain cancels it after the grace
        self.disk_problem = ""
        self.metrics.dead_letters.labels(self.name).inc()
        self.metrics.dropped.labels("dead_letter").inc()
        log.error(
            "line_dead_lettered",
            output=self.name,
            status=outcome.status,
            server_said=outcome.message[:300],
            line=text[:200],
        )
