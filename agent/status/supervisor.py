"""What the service manager is told while the agent runs: a STATUS line when it changes, and
WATCHDOG pings only while the agent makes progress.

A ping proves two things. It is sent by a task on the event loop, so a blocked loop stops the
pings by itself. And it is sent only once a probe job handed to the spool's thread since the
last ping has run: the spool does its sqlite work on that one thread, and a thread stuck in a
hung disk write would otherwise leave an agent that looks alive and stores nothing. systemd
then kills and restarts it (``WatchdogSec=``): a wedged loop or thread is caught within 1.5
times the watchdog timeout; a merely slow job (a long fsync) only delays the next ping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from agent.status.notify import Notifier

log = structlog.get_logger("edge_agent.supervisor")

STATUS_EVERY = 2.0  # seconds between looks at the status line: also its rate limit


@dataclass(frozen=True, slots=True)
class OutputState:
    name: str
    backlog: int
    healthy: bool


def status_line(
    mqtt_connected: bool,
    outputs: Sequence[OutputState],
    intake_blocked: bool = False,
    held: int | None = None,
) -> str:
    """One short human line for ``systemctl status``, e.g.
    ``mqtt connected; cloud: backlog 0, healthy``. ``held``: readings held while the wall
    clock is not trusted (None when it is)."""
    parts = ["mqtt connected" if mqtt_connected else "mqtt disconnected"]
    parts += [
        f"{o.name}: backlog {o.backlog}, {'healthy' if o.healthy else 'failing'}" for o in outputs
    ]
    if intake_blocked:
        parts.append("intake blocked by the spool")
    if held is not None:
        parts.append(f"clock untrusted, {held} held")
    return "; ".join(parts)


class Supervisor:
    def __init__(
        self,
        notifier: Notifier,
        probe: Callable[[], Awaitable[None]],
        describe: Callable[[], str],
        status_every: float = STATUS_EVERY,
    ) -> None:
        """``probe``: a job that must complete on the spool's thread; ``describe``: the current
        status line."""
        self.notifier = notifier
        self._probe = probe
        self._describe = describe
        self._status_every = status_every

    async def run(self, stop: asyncio.Event) -> None:
        if not self.notifier.enabled:
            return
        loops = [self._status(stop)]
        if self.notifier.watchdog_interval is not None:
            loops.append(self._watchdog(stop, self.notifier.watchdog_interval))
        await asyncio.gather(*loops)

    async def _status(self, stop: asyncio.Event) -> None:
        while not await _stopped(stop, self._status_every):
            self.notifier.status(self._describe())

    async def _watchdog(self, stop: asyncio.Event, interval: float) -> None:
        """A ping every ``interval``, each once a probe handed to the spool's thread after the
        previous ping has run: a slow job there delays a ping (it may take up to the whole
        timeout), a stuck one stops them."""
        while True:
            probe = asyncio.ensure_future(self._probe())
            try:
                if await _stopped(stop, interval):
                    return
                if not probe.done():
                    log.warning(
                        "watchdog_ping_held",
                        reason=f"the spool thread has not taken a job for {interval:g}s",
                        note="if it does not move, systemd restarts the agent",
                    )
                    if not await _completes(probe, stop):
                        return
                await probe  # a probe that failed ends the agent: systemd restarts it
                self.notifier.watchdog()
            finally:
                probe.cancel()


async def _completes(probe: asyncio.Future[None], stop: asyncio.Event) -> bool:
    """Wait for ``probe`` or ``stop``; True if the probe is done."""
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((probe, stopper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    return probe.done()


async def _stopped(stop: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds; True (at once) when ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()
