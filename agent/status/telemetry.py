"""The agent's own health as line protocol: the schema, and nothing but the schema.

Fleet dashboards and alerts are written against these names and types (docs/telemetry.md). A
field keeps its type for good (InfluxDB refuses a point whose field changed type), so every value
is converted here, counts to int and the rest to float, whatever the caller hands in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.parse.lineprotocol import FieldValue, encode_line
from agent.status.metrics import DROP_REASONS

MEASUREMENT = "edge_agent"


@dataclass(frozen=True, slots=True)
class AgentHealth:
    received: int
    committed: int
    dead_letters: int
    mqtt_connected: bool
    clock_trusted: bool
    spool_bytes: int
    spool_budget_bytes: int
    rss_bytes: int
    cpu_seconds: float
    uptime_seconds: float
    version: str


@dataclass(frozen=True, slots=True)
class OutputHealth:
    name: str
    backlog_lines: int
    backlog_bytes: int
    oldest_age_seconds: float
    last_success_age_seconds: float | None  # None: no write has succeeded since the start
    healthy: bool
    lines_sent: int
    bytes_sent: int
    dead_letters: int


@dataclass(frozen=True, slots=True)
class Health:
    agent: AgentHealth
    outputs: Sequence[OutputHealth]
    dropped: Mapping[str, int]  # reason -> count, as edge_readings_dropped


def reasons(dropped: Mapping[str, int]) -> list[str]:
    """Every known reason, counted or not, so a dashboard's series exists from the start and the
    first drop shows as a difference; then any other reason that has a count."""
    return [*DROP_REASONS, *sorted(r for r in dropped if r not in DROP_REASONS and dropped[r])]


def points(name: str, tags: Mapping[str, str], health: Health, stamp: int) -> list[str]:
    """One interval's points, all at ``stamp``: the agent's, one per output, one per drop
    reason. The point's own tags (``agent``, ``output``, ``reason``) win over ``[agent.tags]``."""
    base = {**tags, "agent": name}
    lines = [encode_line(MEASUREMENT, base, _agent_fields(health.agent), stamp)]
    for output in health.outputs:
        tagged = {**base, "output": output.name}
        lines.append(encode_line(MEASUREMENT, tagged, _output_fields(output), stamp))
    for reason in reasons(health.dropped):
        fields = {"dropped": int(health.dropped.get(reason, 0))}
        lines.append(encode_line(MEASUREMENT, {**base, "reason": reason}, fields, stamp))
    return lines


def _agent_fields(a: AgentHealth) -> dict[str, FieldValue]:
    return {
        "received": int(a.received),
        "committed": int(a.committed),
        "dead_letters": int(a.dead_letters),
        "mqtt_connected": int(a.mqtt_connected),
        "clock_trusted": int(a.clock_trusted),
        "spool_bytes": int(a.spool_bytes),
        "spool_budget_bytes": int(a.spool_budget_bytes),
        "rss_bytes": int(a.rss_bytes),
        "cpu_seconds": float(a.cpu_seconds),
        "uptime_seconds": float(a.uptime_seconds),
        "version": str(a.version),
    }


def _output_fields(o: OutputHealth) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {
        "backlog_lines": int(o.backlog_lines),
        "backlog_bytes": int(o.backlog_bytes),
        "oldest_age_seconds": float(o.oldest_age_seconds),
    }
    if o.last_success_age_seconds is not None:
        fields["last_success_age_seconds"] = float(o.last_success_age_seconds)
    fields.update(
        healthy=int(o.healthy),
        lines_sent=int(o.lines_sent),
        bytes_sent=int(o.bytes_sent),
        dead_letters=int(o.dead_letters),
    )
    return fields
