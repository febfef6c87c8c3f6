"""One configured output: read batches from its cursor, write them, advance only on success.

Several batches may be in flight; the durable cursor moves over the longest prefix of batches
that have all succeeded, so a crash can only resend (the same points, which the server upserts),
never skip.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from agent.config import OutputSection
from agent.deadletter import DeadLetters, line_record
from agent.forward.classify import Action, Outcome
from agent.forward.http import Writer, encode_body
from agent.spool.store import Position, ReadResult, Spool
from agent.status.metrics import Metrics

log = structlog.get_logger("edge_agent.output")


class _Retry(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


@dataclass(slots=True)
class _Batch:
    stream: str
    end: Position
    done: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


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
        self.new_data = asyncio.Event()
        self._inflight: deque[_Batch] = deque()
        self._slots = asyncio.Semaphore(cfg.max_in_flight)
        self._cursor_lock = asyncio.Lock()
        self._backoff = wait_random_exponential(multiplier=0.25, max=cfg.retry_max_backoff)
        metrics.output_healthy.labels(self.name).set(1)

    # -- reading and dispatch --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch batches until ``stop``; the caller then calls ``drain``."""
        heads: dict[str, Position] = {
            s: await self.spool.cursor(self.name, s) for s in self.cfg.streams
        }
        partial_since: float | None = None
        while not stop.is_set():
            generation = self.spool.drop_generation
            stream, batch = await self._next_batch(heads)
            if batch is None:
                partial_since = None
                await self._wait_for_data(stop, None, 0, time.monotonic() + self.cfg.flush_interval)
                continue
            if partial_since is None:
                partial_since = time.monotonic()
            full = len(batch.lines) >= self.cfg.batch_size or batch.bytes >= self.cfg.batch_bytes
            deadline = partial_since + self.cfg.flush_interval
            if full or time.monotonic() >= deadline:
                if not await self._take_slot(stop):
                    return
                if self.spool.drop_generation != generation:
                    # The budget dropped chunks while this batch waited for a slot: its lines
                    # were counted as dropped, so read again rather than send them anyway.
                    self._slots.release()
                    continue
                heads[stream] = batch.end
                self.spool.read_heads[(self.name, stream)] = batch.end
                partial_since = None
                self._dispatch(stream, batch.lines, batch.end)
                continue
            await self._wait_for_data(
                stop, stream, self.cfg.batch_size - len(batch.lines), deadline
            )

    async def _take_slot(self, stop: asyncio.Event) -> bool:
        """A free in-flight slot, or False once ``stop`` is set: with the server down every slot
        is held by a retrying batch, and shutdown must not wait for one to free up."""
        slot = asyncio.ensure_future(self._slots.acquire())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait((slot, stopper), return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if slot.done() and not slot.cancelled():
            if stop.is_set():
                self._slots.release()
                return False
            return True
        slot.cancel()
        return False

    async def _wait_for_data(
        self, stop: asyncio.Event, stream: str | None, missing: int, deadline: float
    ) -> None:
        """Sleep until the deadline, or until enough new lines to fill the batch were committed
        (counted, not re-read: re-reading a growing partial batch on every commit is quadratic)."""
        baseline = self.spool.appended.get(stream, 0) if stream else 0
        while not stop.is_set():
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return
            self.new_data.clear()
            waiter = asyncio.ensure_future(self.new_data.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                done, _ = await asyncio.wait(
                    (waiter, stopper), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()
                stopper.cancel()
            if not done:
                return
            if stream is None or self.spool.appended.get(stream, 0) - baseline >= missing:
                return

    async def _next_batch(self, heads: dict[str, Position]) -> tuple[str, ReadResult | None]:
        """The first stream, in the configured order, that has lines past its head."""
        for stream in self.cfg.streams:
            result = await self.spool.read(
                stream, heads[stream], self.cfg.batch_size, self.cfg.batch_bytes
            )
            if result.lines:
                return stream, result
            heads[stream] = result.end
        return self.cfg.streams[0], None

    def _dispatch(self, stream: str, lines: list[bytes], end: Position) -> None:
        batch = _Batch(stream, end)
        self._inflight.append(batch)
        batch.task = asyncio.create_task(self._send_batch(batch, lines))

    async def _send_batch(self, batch: _Batch, lines: list[bytes]) -> None:
        began = time.perf_counter()
        try:
            await self._deliver(lines)
        finally:
            self._slots.release()
        self.metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - began)
        batch.done = True
        await self._advance()

    async def _advance(self) -> None:
        async with self._cursor_lock:
            last: dict[str, Position] = {}
            while self._inflight and self._inflight[0].done:
                done = self._inflight.popleft()
                last[done.stream] = done.end
            for stream, pos in last.items():
                await self.spool.commit_cursor(self.name, stream, pos)

    async def drain(self, grace: float) -> int:
        """Let in-flight writes finish for up to ``grace`` seconds; cancel the rest (their lines
        stay behind the cursor and are sent after the restart). Returns how many were cut."""
        tasks = [b.task for b in self._inflight if b.task is not None and not b.task.done()]
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)

    # -- delivery --------------------------------------------------------------------------------

    async def _deliver(self, lines: list[bytes]) -> None:
        """Deliver every line or dead-letter it; only returns once nothing is left to retry."""
        outcome = await self._post_until_answer(lines)
        if outcome.action is Action.SUCCESS:
            self.metrics.lines_sent.labels(self.name).inc(len(lines))
            return
        # SPLIT or BISECT: halve until the offending lines stand alone.
        if len(lines) == 1:
            await self._dead_letter(lines[0], outcome)
            return
        mid = len(lines) // 2
        await self._deliver(lines[:mid])
        await self._deliver(lines[mid:])

    async def _post_until_answer(self, lines: list[bytes]) -> Outcome:
        """POST until the answer is final for these lines: success, split or bisect."""
        body = await encode_body(lines, self.cfg.gzip_level)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Retry),
            wait=self._wait,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                outcome = await self.writer.post(body)
                self.metrics.bytes_sent.labels(self.name).inc(len(body))
                self.metrics.requests.labels(self.name, outcome.label).inc()
                if outcome.action in (Action.RETRY, Action.THROTTLE, Action.CONFIG):
                    raise _Retry(outcome)
                self._set_healthy()
                if outcome.action is Action.SUCCESS:
                    self.metrics.last_success.labels(self.name).set(time.time())
                return outcome
        raise AssertionError("unreachable: the retry loop never stops on its own")

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        outcome = exc.outcome if isinstance(exc, _Retry) else None
        if outcome is not None and outcome.action is Action.CONFIG:
            return self.cfg.config_error_retry
        if outcome is not None and outcome.retry_after is not None:
            return outcome.retry_after
        return float(self._backoff(state))

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, _Retry):
            return
        outcome = exc.outcome
        self.metrics.retries.labels(self.name).inc()
        wait = state.next_action.sleep if state.next_action else 0.0
        if outcome.action is Action.CONFIG:
            self._set_unhealthy(outcome)
        if state.attempt_number in (1, 2, 5) or state.attempt_number % 20 == 0:
            log.warning(
                "write_retry",
                output=self.name,
                outcome=outcome.label,
                action=outcome.action.value,
                attempt=state.attempt_number,
                retry_in=round(wait, 2),
                error=outcome.message[:300],
            )

    def _set_unhealthy(self, outcome: Outcome) -> None:
        problem = f"HTTP {outcome.status} from {self.writer.target.url}: check url, " + (
            "token, org and bucket" if self.cfg.api == "v2" else "username, password, database"
        )
        if self.healthy:
            log.error(
                "output_config_error",
                output=self.name,
                problem=problem,
                server_said=outcome.message[:300],
                note="nothing is dropped; retrying slowly",
            )
        self.healthy = False
        self.problem = problem
        self.metrics.output_healthy.labels(self.name).set(0)

    def _set_healthy(self) -> None:
        if not self.healthy:
            log.info("output_recovered", output=self.name)
        self.healthy = True
        self.problem = ""
        self.metrics.output_healthy.labels(self.name).set(1)

    async def _dead_letter(self, line: bytes, outcome: Outcome) -> None:
        text = line.decode(errors="replace")
        record = line_record(text, outcome.status or 0, outcome.message[:1000])
        await asyncio.to_thread(self.dead_letters.write, [record])
        self.metrics.dead_letters.labels(self.name).inc()
        self.metrics.dropped.labels("dead_letter").inc()
        log.error(
            "line_dead_lettered",
            output=self.name,
            status=outcome.status,
            server_said=outcome.message[:300],
            line=text[:200],
        )
