"""The aggregation stage: reads the raw stream from its own cursor, fills windows, and commits
the aggregates it emits, its window state and its cursor in one spool transaction."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import structlog

from agent.aggregate.readings import Reading, output_head, read_line
from agent.aggregate.windows import NS, WindowSpec, WindowTable
from agent.config import AggregationSection
from agent.logs import RateLimited
from agent.parse.lineprotocol import LineProtocolError
from agent.spool.store import Checkpoint, Position, Spool, WindowRows, wait_for_data
from agent.status.metrics import Metrics

log = structlog.get_logger("edge_agent.aggregate")

CONSUMER = "aggregator"
SOURCE, TARGET = "raw", "aggregates"
READ_LINES = 5000
READ_BYTES = 4 * 1024 * 1024
SLICE = 1000  # lines between yields to the event loop, which also runs MQTT intake
CHECKPOINT_INTERVAL = 0.5  # seconds between checkpoints at the least
TICK = 1.0  # how often quiet series are checked for windows to emit
# Routes cached per aggregated series at most (about 270 bytes each): raw series that match no
# aggregation are cached too, and tags that never repeat must not grow the cache past the bound
# on the series themselves.
ROUTES_PER_SERIES = 2
FIELD_CACHE = 10_000
EVICTION_LOG_INTERVAL = 60.0


@dataclass(slots=True)
class _Aggregation:
    cfg: AggregationSection
    identity: str  # what its checkpointed windows depend on: a change starts them afresh
    table: WindowTable
    all_fields: bool
    field_ok: dict[str, bool] = field(default_factory=dict)
    unlogged_evictions: int = 0

    @classmethod
    def of(cls, cfg: AggregationSection) -> _Aggregation:
        spec = spec_of(cfg)
        identity = json.dumps([spec.every, spec.offset, cfg.measurements, cfg.fields, cfg.suffix])
        return cls(cfg, identity, WindowTable(spec, len(identity)), cfg.fields == ["*"])

    def fields_of(self, reading: Reading) -> list[tuple[str, float]]:
        if self.all_fields:
            return reading.fields
        out = []
        for name, value in reading.fields:
            ok = self.field_ok.get(name)
            if ok is None:
                if len(self.field_ok) >= FIELD_CACHE:  # field names that never repeat
                    self.field_ok.clear()
                ok = self.field_ok[name] = any(fnmatchcase(name, p) for p in self.cfg.fields)
            if ok:
                out.append((name, value))
        return out


def spec_of(cfg: AggregationSection) -> WindowSpec:
    return WindowSpec(
        every=round(cfg.every * NS),
        offset=round(cfg.offset * NS),
        lateness=round(cfg.lateness * NS),
        functions=tuple(cfg.functions),
        stamp_at_stop=cfg.timestamp == "stop",
        max_series=cfg.max_series,
    )


class Aggregator:
    def __init__(
        self,
        cfgs: list[AggregationSection],
        spool: Spool,
        metrics: Metrics,
        live: Callable[[], bool],
    ) -> None:
        """``live`` says whether the MQTT session is up: only then does quiet time count."""
        self.spool = spool
        self.metrics = metrics
        self._is_live = live
        self._aggs = [_Aggregation.of(c) for c in cfgs]
        self._routes: dict[str, list[tuple[int, str]]] = {}
        self._route_limit = ROUTES_PER_SERIES * sum(c.max_series for c in cfgs)
        self._live = 0.0
        self._live_at = time.monotonic()
        self._bad_log = RateLimited(60.0)
        self._eviction_log = RateLimited(EVICTION_LOG_INTERVAL)
        self.new_data = asyncio.Event()
        spool.listen(self.new_data)

    async def load(self) -> None:
        """Restore the checkpointed windows; forget those of aggregations no longer configured."""
        tables = {a.identity: a.table for a in self._aggs}
        rows = await self.spool.load_windows(tables)
        for identity, head, clock, closed in rows.series:
            tables[identity].load_series(head, clock, closed, self._live)
        for identity, head, start, state in rows.windows:
            tables[identity].load_window(head, start, state)
        self.spool.state_bytes = self._state_bytes()
        for agg in self._aggs:
            self.metrics.windows_open.labels(agg.cfg.name).set(agg.table.open_windows)
            self._state_metrics(agg)

    async def run(self, stop: asyncio.Event) -> None:
        pos = await self.spool.cursor(CONSUMER, SOURCE)
        last_scan = last_checkpoint = time.monotonic()
        while not stop.is_set():
            self._advance_live()
            self.new_data.clear()
            result = await self.spool.read(SOURCE, pos, READ_LINES, READ_BYTES)
            self.spool.read_heads[(CONSUMER, SOURCE)] = result.end
            touched = await self._consume(result.lines)
            full_scan = time.monotonic() - last_scan >= TICK
            if full_scan:
                last_scan = time.monotonic()
            lines = self._collect(None if full_scan else touched)
            rows = self._changes()
            if result.end != pos or lines or rows:
                self._checkpoint(result.end, lines, rows)
                last_checkpoint = time.monotonic()
            pos = result.end
            if len(result.lines) < READ_LINES:
                await self._pause(stop, last_checkpoint)

    def _changes(self) -> WindowRows:
        rows = WindowRows([], [], [])
        for agg in self._aggs:
            key = agg.identity
            changes = agg.table.take_changes()
            rows.evicted.extend((key, head) for head in changes.evicted)
            rows.series.extend((key, *row) for row in changes.series)
            rows.windows.extend((key, *row) for row in changes.windows)
            rows.removed.extend((key, *row) for row in changes.removed)
        return rows

    def _state_bytes(self) -> int:
        return sum(agg.table.state_bytes for agg in self._aggs)

    def _state_metrics(self, agg: _Aggregation) -> None:
        name = agg.cfg.name
        self.metrics.aggregate_series.labels(name).set(len(agg.table.series))
        self.metrics.aggregate_state_bytes.labels(name).set(agg.table.state_bytes)

    def _advance_live(self) -> None:
        now = time.monotonic()
        if self._is_live():
            self._live += now - self._live_at
        self._live_at = now

    async def _consume(self, lines: list[bytes]) -> list[set[str]]:
        touched: list[set[str]] = [set() for _ in self._aggs]
        too_late = [0] * len(self._aggs)
        live = self._live
        for start in range(0, len(lines), SLICE):
            if start:
                await asyncio.sleep(0)
            for raw in lines[start : start + SLICE]:
                try:
                    reading = read_line(raw.decode())
                    routes = self._routes.get(reading.head)
                    if routes is None:
                        routes = self._route(reading)
                    for i, head in routes:
                        fields = self._aggs[i].fields_of(reading)
                        if not fields:
                            continue
                        if self._aggs[i].table.add(head, fields, reading.ts, live):
                            touched[i].add(head)
                        else:
                            too_late[i] += 1
                except (LineProtocolError, ValueError) as exc:
                    self._bad_line(raw, exc)
                except Exception as exc:  # a bug must cost one line, not a crash loop on it
                    self._bad_line(raw, exc, bug=True)
        for agg, count in zip(self._aggs, too_late, strict=True):
            if count:
                self.metrics.too_late.labels(agg.cfg.name).inc(count)
        return touched

    def _route(self, reading: Reading) -> list[tuple[int, str]]:
        """The aggregations a series belongs to, and its aggregate series text in each."""
        if len(self._routes) >= self._route_limit:
            self._routes.clear()
        routes: list[tuple[int, str]] = []
        for i, agg in enumerate(self._aggs):
            if not any(fnmatchcase(reading.measurement, p) for p in agg.cfg.measurements):
                continue
            head = output_head(reading, agg.cfg.suffix)
            clash = next((other for other, h in routes if h == head), None)
            if clash is not None:
                log.error(
                    "aggregations_overlap",
                    measurement=reading.measurement,
                    kept=self._aggs[clash].cfg.name,
                    skipped=agg.cfg.name,
                    fix="give each aggregation that matches this measurement its own suffix",
                )
                continue
            routes.append((i, head))
        self._routes[reading.head] = routes
        return routes

    def _collect(self, touched: list[set[str]] | None) -> list[str]:
        lines: list[str] = []
        for i, agg in enumerate(self._aggs):
            out = agg.table.collect(self._live, None if touched is None else touched[i])
            lines.extend(out.lines)
            name = agg.cfg.name
            if out.emitted:
                self.metrics.windows_emitted.labels(name).inc(out.emitted)
            if out.reemitted:
                self.metrics.windows_reemitted.labels(name).inc(out.reemitted)
            if out.evicted:
                self._evicted(agg, out.evicted)
            self.metrics.windows_open.labels(name).set(agg.table.open_windows)
        return lines

    def _evicted(self, agg: _Aggregation, count: int) -> None:
        name = agg.cfg.name
        self.metrics.series_evicted.labels(name).inc(count)
        agg.unlogged_evictions += count
        if self._eviction_log.allow(name) is not None:
            log.warning(
                "aggregate_series_evicted",
                aggregation=name,
                evicted=agg.unlogged_evictions,
                max_series=agg.table.spec.max_series,
                hint="tags that never repeat (a message id, a timestamp) make a new series per "
                "reading: aggregate only measurements whose tags name things, or raise "
                "max_series if this many series are real",
            )
            agg.unlogged_evictions = 0

    def _checkpoint(self, end: Position, lines: list[str], rows: WindowRows) -> None:
        """Queue the checkpoint: the spool writes it, atomically and in order, with its next
        transaction (an intake commit, usually), and keeps it queued across a full disk."""
        self.spool.checkpoint_windows(
            Checkpoint(CONSUMER, SOURCE, end, TARGET, lines, rows, self._state_bytes())
        )
        if lines:
            self.metrics.committed.labels(TARGET).inc(len(lines))
        for agg in self._aggs:
            self._state_metrics(agg)

    async def _pause(self, stop: asyncio.Event, last_checkpoint: float) -> None:
        """Wait for new raw lines or the next tick, but not less than the checkpoint interval."""
        rest = last_checkpoint + CHECKPOINT_INTERVAL - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)
        await wait_for_data(self.new_data, stop, TICK)

    def _bad_line(self, raw: bytes, exc: Exception, bug: bool = False) -> None:
        """The line stays in the raw stream (the outputs send it); only its aggregates lack it."""
        self.metrics.aggregate_skipped.inc()
        suppressed = self._bad_log.allow("bad_line")
        if suppressed is not None:
            log.error(
                "aggregate_unreadable_line",
                error=f"{type(exc).__name__}: {exc}",
                line=raw[:200].decode(errors="replace"),
                suppressed_since_last=suppressed,
                exc_info=exc if bug else None,
            )
