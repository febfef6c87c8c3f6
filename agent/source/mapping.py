"""A batch of received messages to what one group commit stores: raw lines, lines held for the
clock, and the dead letters of the messages set aside.

Each message is mapped on its own, inside its own try: whatever fails for one message (its size,
its format, its text, its timestamp, or a bug of ours) sets that message aside with its reason and
never touches the others. Failures of the spool or the disk are not decided here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.clock import hold
from agent.deadletter import payload_record
from agent.logs import RateLimited
from agent.parse.clock import IngestClock
from agent.parse.message import SAMPLE_BYTES, encode_lines, map_message
from agent.parse.payload import MappingRules, PayloadError

log = structlog.get_logger("edge_agent.source")


@dataclass(frozen=True, slots=True)
class Route:
    rules: MappingRules
    qos: int
    label: str


@dataclass(slots=True)
class Prepared:
    """One commit's worth of mapped messages."""

    raw: list[bytes] = field(default_factory=list)  # one newline-joined body per message
    raw_lines: int = 0
    held: list[bytes] = field(default_factory=list)  # one marked line each
    bad: list[dict[str, Any]] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> messages
    received: dict[str, int] = field(default_factory=dict)  # subscription -> messages


class Mapper:
    def __init__(self, routes: list[Route], clock: IngestClock, max_payload: int) -> None:
        self.routes = routes
        self.clock = clock
        self.max_payload = max_payload
        self._log = RateLimited()

    def add(self, topic: str, payload: bytes, out: Prepared) -> None:
        route = self._route(topic)
        if route is None:
            self._reject(topic, payload, "no_subscription", "no subscription template matches", out)
            return
        out.received[route.label] = out.received.get(route.label, 0) + 1
        clock = self.clock
        try:
            lines = map_message(route.rules, topic, payload, clock, self.max_payload)
            body = encode_lines(lines)
            if clock.holding:
                out.held.extend(hold.mark(body.split(b"\n"), clock.boot_stamped))
            else:
                out.raw.append(body)
                out.raw_lines += len(lines)
        except PayloadError as exc:
            self._reject(topic, payload, exc.reason, str(exc), out)
        except Exception as exc:  # a bug of ours must cost one message, never the agent
            if self._log.allow("internal_error") is not None:
                log.exception("mapping_failed", topic=topic, payload=payload[:200])
            self._reject(topic, payload, "internal_error", f"{type(exc).__name__}: {exc}", out)
        finally:
            clock.boot_stamped.clear()

    def _route(self, topic: str) -> Route | None:
        if len(self.routes) == 1:
            return self.routes[0]  # its template decides, and says why in the error
        for route in self.routes:
            if route.rules.template.match(topic) is not None:
                return route
        return None

    def _reject(self, topic: str, payload: bytes, reason: str, error: str, out: Prepared) -> None:
        if reason == "too_large":
            record = payload_record(topic, payload[:SAMPLE_BYTES], reason, error, len(payload))
        else:
            record = payload_record(topic, payload, reason, error)
        out.bad.append(record)
        out.rejected[reason] = out.rejected.get(reason, 0) + 1
        suppressed = self._log.allow(reason)
        if suppressed is not None:
            log.warning(
                "payload_rejected",
                topic=topic,
                reason=reason,
                error=error[:300],
                suppressed_since_last=suppressed,
            )
