"""The priority gate of one output: every write attempt passes it, so a busy or failing server
sees one polite client, not one per batch.

Open, it lets up to ``limit`` attempts through at once, highest priority first (the lowest
tuple). A retryable answer closes it until a probe time; then, once nothing is in flight, the
single highest-priority waiter at that moment makes the next attempt alone. An answer that is
final for its lines opens it again. So after an outage the first write is the most urgent batch,
and during one the server gets one request per backoff interval, not ``limit`` of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, wait_random_exponential

Priority = tuple[int, int]
Backoff = Callable[[int], float]


def full_jitter(cap: float, first: float = 0.25) -> Backoff:
    """tenacity's exponential backoff with full jitter, indexed by consecutive failures: a
    uniform draw in [0, min(cap, first * 2**(failures - 1))]."""
    strategy = wait_random_exponential(multiplier=first, max=cap)
    state = RetryCallState(AsyncRetrying(), None, (), {})

    def backoff(failures: int) -> float:
        state.attempt_number = failures
        return float(strategy(state))

    return backoff


@dataclass(frozen=True, slots=True)
class Ticket:
    """One granted attempt; ``probe`` when granted while the gate was closed."""

    probe: bool


class Gate:
    def __init__(self, limit: int, backoff: Backoff) -> None:
        self.limit = limit
        self.backoff = backoff
        self.failures = 0  # since the gate last opened, one per probe: the backoff exponent
        self.active = 0
        self._closed_until: float | None = None  # loop time of the next probe; None: open
        self._waiting: list[tuple[Priority, int, asyncio.Future[Ticket]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return self._closed_until is not None

    @contextlib.asynccontextmanager
    async def turn(self, priority: Priority) -> AsyncIterator[Ticket]:
        """Wait for a grant; the slot is freed on leaving the block, answered or not."""
        ticket = await self._enter(priority)
        try:
            yield ticket
        finally:
            self.active -= 1
            self._pump()

    def passed(self) -> None:
        """The server gave a final answer for the lines: open, waiters go in priority order."""
        self._closed_until = None
        self.failures = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pump()

    def failed(self, ticket: Ticket, wait: float | None) -> float:
        """A retryable answer: close until the next probe, ``wait`` seconds from now when the
        server or config says (Retry-After, config_error_retry), else after a jittered backoff.
        An attempt that was already out when the gate closed extends the closure but does not
        count as another failure. Returns the seconds until the probe."""
        now = asyncio.get_running_loop().time()
        if ticket.probe or self._closed_until is None:
            self.failures += 1
        until = now + (wait if wait is not None else self.backoff(self.failures))
        if self._closed_until is None or until > self._closed_until:
            self._closed_until = until
        return self._closed_until - now

    async def _enter(self, priority: Priority) -> Ticket:
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), future))
        self._pump()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted, then cancelled: give back
                self.active -= 1
                self._pump()
            raise

    def _pump(self) -> None:
        while self._waiting and self._waiting[0][2].done():  # cancelled waiters
            heapq.heappop(self._waiting)
        if not self._waiting:
            return
        if self._closed_until is None:
            while self._waiting and self.active < self.limit:
                self._grant(probe=False)
            return
        if self.active:
            return  # an attempt is out: its answer decides before anyone probes
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if loop.time() < self._closed_until:
            self._timer = loop.call_at(self._closed_until, self._pump)
            return
        self._grant(probe=True)

    def _grant(self, probe: bool) -> None:
        _, _, future = heapq.heappop(self._waiting)
        if future.done():
            return
        self.active += 1
        future.set_result(Ticket(probe))
