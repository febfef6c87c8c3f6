"""The priority gate on its own: no sockets, tiny delays, and only lower bounds on time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.forward.gate import Gate, Priority, Ticket, full_jitter


class Attempt:
    """A task that takes a turn at the gate and holds it until the test gives the answer."""

    def __init__(self, gate: Gate, priority: Priority, granted: list[Priority]) -> None:
        self.gate = gate
        self.priority = priority
        self.granted = granted
        self.ticket: Ticket | None = None
        self.at = 0.0
        loop = asyncio.get_running_loop()
        self.answer: asyncio.Future[Callable[[Ticket], object]] = loop.create_future()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with self.gate.turn(self.priority) as ticket:
            self.ticket = ticket
            self.at = asyncio.get_running_loop().time()
            self.granted.append(self.priority)
            (await self.answer)(ticket)

    async def passes(self) -> None:
        self.answer.set_result(lambda _: self.gate.passed())
        await self.task

    async def fails(self, wait: float | None = None) -> None:
        self.answer.set_result(lambda t: self.gate.failed(t, wait))
        await self.task


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def until(check: Callable[[], bool], limit: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_grants_in_priority_order_within_the_limit() -> None:
    gate = Gate(2, lambda n: 0.0)
    granted: list[Priority] = []
    holders = [Attempt(gate, (5, 0), granted), Attempt(gate, (5, 1), granted)]
    await settle()
    waiters = {p: Attempt(gate, p, granted) for p in [(1, 5), (0, 3), (1, 2), (0, 1)]}
    await settle()
    assert granted == [(5, 0), (5, 1)] and gate.active == 2
    await holders[0].passes()
    await settle()
    assert granted[2:] == [(0, 1)] and gate.active == 2
    await holders[1].passes()
    for p in [(0, 1), (0, 3), (1, 2)]:
        await settle()
        assert gate.active == 2
        await waiters[p].passes()
    await waiters[(1, 5)].passes()
    assert granted[2:] == [(0, 1), (0, 3), (1, 2), (1, 5)]
    assert gate.active == 0


async def test_one_probe_at_a_time_while_closed_then_open_in_priority_order() -> None:
    streaks: list[int] = []

    def backoff(failures: int) -> float:
        streaks.append(failures)
        return 0.02

    gate = Gate(3, backoff)
    granted: list[Priority] = []
    first = [Attempt(gate, (1, i), granted) for i in range(3)]
    await settle()
    await first[0].fails()
    assert gate.closed
    waiters = {p: Attempt(gate, p, granted) for p in [(1, 7), (0, 9), (1, 3), (0, 4)]}
    await asyncio.sleep(0.1)  # past the probe time, but two attempts from before are still out
    assert len(granted) == 3
    await first[1].fails()
    await first[2].fails()
    assert gate.failures == 1  # those were out before the gate closed: one outage, one failure

    await until(lambda: len(granted) == 4)
    probe = waiters.pop((0, 4))
    assert granted[-1] == (0, 4) and probe.ticket is not None and probe.ticket.probe
    await asyncio.sleep(0.1)
    assert len(granted) == 4 and gate.active == 1  # alone, however long it takes
    await probe.fails()
    assert gate.failures == 2
    retry = Attempt(gate, (0, 4), granted)  # the same batch comes back to the gate
    await until(lambda: len(granted) == 5)
    assert granted[-1] == (0, 4) and gate.active == 1
    await retry.passes()

    assert not gate.closed and gate.failures == 0
    await settle()
    assert granted[5:] == [(0, 9), (1, 3), (1, 7)]  # all at once: the limit is 3
    assert gate.active == 3 and all(w.ticket and not w.ticket.probe for w in waiters.values())
    assert streaks == [1, 1, 1, 2]  # the ones already out drew a backoff too, at the same step
    for waiter in waiters.values():
        await waiter.passes()


async def test_retry_after_is_waited_out_and_a_longer_one_extends_it() -> None:
    loop = asyncio.get_running_loop()
    gate = Gate(2, lambda n: 0.0)
    granted: list[Priority] = []
    a, b = Attempt(gate, (1, 0), granted), Attempt(gate, (1, 1), granted)
    await settle()
    began = loop.time()
    await a.fails(0.2)
    await b.fails(0.4)  # out before the gate closed: its Retry-After still counts
    waiter = Attempt(gate, (0, 0), granted)
    await until(lambda: waiter.ticket is not None)
    assert waiter.at >= began + 0.4
    assert gate.failures == 1
    await waiter.passes()


async def test_an_answer_from_an_attempt_already_out_reopens_the_gate() -> None:
    gate = Gate(2, lambda n: 60.0)
    granted: list[Priority] = []
    a, b = Attempt(gate, (1, 0), granted), Attempt(gate, (1, 1), granted)
    await settle()
    await a.fails()
    waiter = Attempt(gate, (0, 0), granted)
    await settle()
    assert gate.closed and waiter.ticket is None
    await b.passes()  # the server answered after all: no need to sit out the backoff
    await settle()
    assert not gate.closed and waiter.ticket is not None and not waiter.ticket.probe
    await waiter.passes()


async def test_cancelled_waiters_hold_no_slot() -> None:
    gate = Gate(1, lambda n: 0.0)
    granted: list[Priority] = []
    gone = Attempt(gate, (0, 0), granted)
    gone.task.cancel()
    await settle()
    async with gate.turn((1, 0)):
        late = Attempt(gate, (1, 1), granted)
        await settle()
    late.task.cancel()  # granted on leaving the block above, cancelled before it could run
    await settle()
    assert gate.active == 0 and granted == []
    last = Attempt(gate, (2, 0), granted)
    await settle()
    assert granted == [(2, 0)]
    await last.passes()


def test_full_jitter_stays_within_the_exponential_window_and_the_cap() -> None:
    backoff = full_jitter(cap=1.0)
    for failures in range(1, 12):
        window = min(1.0, 0.25 * 2 ** (failures - 1))
        draws = [backoff(failures) for _ in range(200)]
        assert all(0.0 <= d <= window for d in draws)
        assert max(draws) > window / 2  # jitter over the whole window, not a fixed delay
