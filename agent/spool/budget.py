"""Which chunks to give up, or whether to stop taking messages, when a spool budget is hit.

Pure logic, so the policy is tested without a disk. Raw readings (and readings held for the
clock, which become raw) go before aggregates and the agent's telemetry, oldest first: an
aggregate summarises many readings, so losing it costs more, and the telemetry of an outage
(a few points an interval) is how the fleet learns what the gateway went through.

Ages are read on an age clock, not the wall clock: a Raspberry Pi that boots in 1970 and is then
stepped to today by NTP would otherwise find its whole backlog 56 years old and drop it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from agent.clock import hold


class AgeClock:
    """Seconds the spool has been open, summed over runs: it starts where the newest chunk was
    stamped and runs on the monotonic clock. ``max_age`` therefore counts the time data has
    waited while the agent ran; neither a clock step nor a week switched off ages it."""

    def __init__(self, start: float) -> None:
        self._start = start
        self._opened = time.monotonic()

    def now(self) -> float:
        return self._start + time.monotonic() - self._opened


@dataclass(frozen=True, slots=True)
class Budget:
    max_size: int
    max_age: float
    min_free_disk: int
    when_full: Literal["drop_oldest", "block"]


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    id: int
    stream: str
    created: float
    bytes: int


@dataclass(frozen=True, slots=True)
class DropPlan:
    drop: tuple[tuple[int, str], ...] = ()
    blocked_reason: str | None = None


def _drop_rank(chunk: ChunkInfo) -> tuple[int, int]:
    raw = chunk.stream == "raw" or hold.target_of(chunk.stream) == "raw"
    return (0 if raw else 1), chunk.id


def plan_drops(
    budget: Budget,
    chunks: list[ChunkInfo],
    total_bytes: int,
    incoming: int,
    free_disk: int,
    now: float,
    state_bytes: int = 0,
) -> DropPlan:
    """Plan for storing ``incoming`` more bytes beside ``total_bytes`` of chunks and
    ``state_bytes`` of aggregation state, which counts toward the size budget but is never
    dropped (it is bounded by each aggregation's ``max_series``).

    The age budget always drops (data past it is worthless whatever the policy). The size budget
    and the free-disk floor follow ``when_full``; if dropping everything allowed still would not
    make room, intake blocks and the broker keeps the messages. One commit larger than the
    whole budget is let into a spool that holds no chunks: refusing it would block intake for
    good, as the state alone might fill the budget.
    """
    aged = [c for c in chunks if now - c.created > budget.max_age]
    drop = [(c.id, "max_age") for c in aged]
    size = total_bytes - sum(c.bytes for c in aged)
    need_size = size + state_bytes + incoming - budget.max_size
    # Deleting rows does not shrink the file, it lets SQLite reuse the pages: below the floor the
    # spool may only replace old data, never grow.
    need_disk = incoming if free_disk < budget.min_free_disk else 0
    if need_size <= 0 and need_disk <= 0:
        return DropPlan(tuple(drop))
    reason = "max_size" if need_size > 0 else "min_free_disk"
    if size <= 0 and need_disk <= 0:
        return DropPlan(tuple(drop))
    if budget.when_full == "block":
        return DropPlan(tuple(drop), blocked_reason=reason)
    need = max(need_size, need_disk)
    aged_ids = {c.id for c in aged}
    for chunk in sorted((c for c in chunks if c.id not in aged_ids), key=_drop_rank):
        if need <= 0:
            break
        drop.append((chunk.id, reason))
        need -= chunk.bytes
    if need > 0 and (need_disk > 0 or len(drop) < len(chunks)):
        return DropPlan(tuple(drop), blocked_reason=reason)
    return DropPlan(tuple(drop))
