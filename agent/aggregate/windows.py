"""Event-time tumbling windows per series: when a window is emitted, re-emitted and final.

Pure logic (no I/O, time passed in), so every rule is tested without a spool or a clock.

Each series (measurement + tags) has its own event clock: the latest timestamp it has sent. A
per-series clock means one sensor with a wrong clock cannot close the windows of the others.
For a window [start, stop) of a series, with ``lateness`` L:

- it is **emitted** once the series' clock reaches stop + L, or once the series has been quiet
  for ``idle`` (L, at least 1 s) of live time, so the last window of a sensor that stops, or of
  one that reports every few minutes, still arrives;
- a reading for an emitted window, until the window is final, **re-emits** it, with the same
  timestamp, so the server overwrites the earlier aggregate;
- it is **final** once the series' clock reaches stop + 2L, or after 2 x ``idle`` of quiet; its
  state is then forgotten, and any later reading for it is **too late**: counted, left out of the
  aggregates (the raw stream still carries it).

Whether a reading is too late depends on the series' clock and on which windows are final, both
checkpointed, never on how the backlog was cut into batches: a crash changes when windows are
emitted, not what they finally hold. Live time only advances while the MQTT session is up (the
caller decides), so a broker or agent outage does not make its own backlog too late.

A table holds at most ``max_series`` series. A series whose windows are all final is only its
clock and its final mark, kept so that a very late reading cannot overwrite a finished
aggregate with a partial one; tags that never repeat (a message id) would make a new one per
reading. When a new series would exceed the bound, a batch of series is **evicted**: first those
without open windows, least recently heard first, then, to fill the batch, the idlest series
with open windows, whose dirty windows are emitted first so no reading is lost from the
aggregates. An evicted series is forgotten: a reading for it starts a new series, and one for a
window already emitted (or final) starts a fresh window whose partial aggregate, stamped like
the complete one, overwrites it at the server. Long-idle final series go first because they
are the least likely to hear such a reading.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent.aggregate.exact import Accumulator
from agent.parse.lineprotocol import escape_key

NS = 1_000_000_000
MIN_IDLE = 1.0
MAX_SERIES = 10_000
EVICT_FRACTION = 16  # a batch evicts max_series / this: one scan of the table per batch
# SQLite's bytes per checkpoint row beyond the values it holds (record header, cell pointer,
# B-tree page slack), measured with dbstat on a table of realistic rows.
ROW_OVERHEAD = 32
INT_BYTES = 8


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Window geometry and emission rules of one aggregation, times in ns."""

    every: int
    offset: int = 0
    lateness: int = 0
    functions: tuple[str, ...] = ("mean", "min", "max", "count")
    stamp_at_stop: bool = True
    max_series: int = MAX_SERIES

    @property
    def idle(self) -> float:
        """Seconds of quiet after which a series' open windows are emitted."""
        return max(self.lateness / NS, MIN_IDLE)

    def start_of(self, ts: int) -> int:
        """Windows are aligned to the epoch plus ``offset``, like Flux ``aggregateWindow``."""
        return (ts - self.offset) // self.every * self.every + self.offset


@dataclass(slots=True)
class Window:
    fields: dict[str, Accumulator] = field(default_factory=dict)
    dirty: bool = False  # holds readings not yet in an emitted aggregate
    emitted: bool = False
    saved: int = 0  # bytes of its checkpoint row as last written, 0 if none


@dataclass(slots=True)
class Series:
    clock: int
    closed: int | None = None  # windows with stop <= closed are final
    heard: float = 0.0  # live time of the latest reading (not checkpointed)
    windows: dict[int, Window] = field(default_factory=dict)


@dataclass(slots=True)
class Emission:
    lines: list[str] = field(default_factory=list)
    emitted: int = 0
    reemitted: int = 0
    evicted: int = 0


@dataclass(slots=True)
class Changes:
    """What a checkpoint must write: only the windows and series touched since the last one,
    so a long lateness (many open windows per series) does not rewrite them all each time."""

    evicted: list[str] = field(default_factory=list)  # series whose rows all go, first
    series: list[tuple[str, int, int | None]] = field(default_factory=list)
    windows: list[tuple[str, int, str]] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)


class WindowTable:
    """The open windows of every series of one aggregation, keyed by the output series text
    (escaped measurement and tags, as it starts the aggregate line).

    ``state_bytes`` estimates the bytes of the checkpoint rows once the changes taken so far are
    written (a new series' clock row counts from its first reading). It is kept up to date as
    rows come and go, never recounted; ``key_bytes`` is the length of the aggregation key that
    leads each row."""

    def __init__(self, spec: WindowSpec, key_bytes: int = 0) -> None:
        self.spec = spec
        self.series: dict[str, Series] = {}
        self.changed: dict[str, set[int]] = {}  # series -> starts of windows changed or removed
        self.evicted: set[str] = set()  # series evicted since the last checkpoint
        self.state_bytes = 0
        self._row_bytes = key_bytes + ROW_OVERHEAD
        self._pending = Emission()  # what evictions emitted, handed out by the next collect

    def add(self, head: str, fields: Sequence[tuple[str, float]], ts: int, live: float) -> bool:
        """Add one reading; False if it is too late for its window."""
        spec = self.spec
        start = spec.start_of(ts)
        stop = start + spec.every
        series = self.series.get(head)
        if series is None:
            if len(self.series) >= spec.max_series:
                self._evict()
            series = self.series[head] = Series(ts, heard=live)
            self.state_bytes += self.series_row_bytes(head)
        elif stop + 2 * spec.lateness <= series.clock or (
            series.closed is not None and stop <= series.closed
        ):
            return False
        window = series.windows.get(start)
        if window is None:
            window = series.windows[start] = Window()
        for name, value in fields:
            acc = window.fields.get(name)
            if acc is None:
                acc = window.fields[name] = Accumulator()
            acc.add(ts, value)
        window.dirty = True
        if ts > series.clock:
            series.clock = ts
        series.heard = live
        self.changed.setdefault(head, set()).add(start)
        return True

    def collect(self, live: float, heads: Iterable[str] | None = None) -> Emission:
        """Emit the windows that are due and forget the final ones, for ``heads`` (all if None),
        with what evictions emitted since the last call."""
        out, self._pending = self._pending, Emission()
        for head in self.series if heads is None else heads:
            series = self.series.get(head)  # None once evicted
            if series is not None and series.windows:
                self._collect_series(head, series, live, out)
        return out

    def _evict(self) -> None:
        """Make room for a batch of new series: those without open windows first, then the
        idlest; least recently heard first, then oldest clock. One scan of the table serves the
        whole batch, so its cost is spread over that many new series."""
        batch = max(1, self.spec.max_series // EVICT_FRACTION)
        final = [(s.heard, s.clock, head) for head, s in self.series.items() if not s.windows]
        ranked = heapq.nsmallest(batch, final)
        if len(ranked) < batch:
            busy = [(s.heard, s.clock, head) for head, s in self.series.items() if s.windows]
            ranked += heapq.nsmallest(batch - len(ranked), busy)
        out = self._pending
        for _, _, head in ranked:
            series = self.series.pop(head)
            for start in sorted(series.windows):
                window = series.windows[start]
                if window.dirty:
                    self._emit(head, start, window, out)
                self.state_bytes -= window.saved
            self.state_bytes -= self.series_row_bytes(head)
            self.changed.pop(head, None)
            self.evicted.add(head)
        out.evicted += len(ranked)

    def _collect_series(self, head: str, series: Series, live: float, out: Emission) -> None:
        spec = self.spec
        quiet = live - series.heard
        idle = quiet >= spec.idle
        forget = quiet >= 2 * spec.idle
        for start in sorted(series.windows):
            window = series.windows[start]
            stop = start + spec.every
            if window.dirty and (idle or series.clock >= stop + spec.lateness):
                self._emit(head, start, window, out)
                self.changed.setdefault(head, set()).add(start)
            if forget or series.clock >= stop + 2 * spec.lateness:
                del series.windows[start]
                self.state_bytes -= window.saved
                series.closed = stop if series.closed is None else max(series.closed, stop)
                self.changed.setdefault(head, set()).add(start)
        if not series.windows:
            series.windows = {}  # an emptied dict keeps its table: most series end up here

    def _emit(self, head: str, start: int, window: Window, out: Emission) -> None:
        line = self._line(head, start, window)
        if line is not None:
            out.lines.append(line)
        if window.emitted:
            out.reemitted += 1
        else:
            out.emitted += 1
        window.dirty = False
        window.emitted = True

    def _line(self, head: str, start: int, window: Window) -> str | None:
        parts = []
        for name in sorted(window.fields):
            acc = window.fields[name]
            for function in self.spec.functions:
                value = acc.result(function)
                if value is None:
                    continue
                text = f"{value}i" if function == "count" else repr(float(value))
                parts.append(f"{escape_key(f'{name}_{function}')}={text}")
        if not parts:
            return None
        ts = start + self.spec.every if self.spec.stamp_at_stop else start
        return f"{head} {','.join(parts)} {ts}"

    @property
    def open_windows(self) -> int:
        return sum(len(s.windows) for s in self.series.values())

    def series_row_bytes(self, head: str) -> int:
        """Estimated bytes of a series' clock row: key, series text, clock and final mark."""
        return self._row_bytes + len(head) + 2 * INT_BYTES

    def window_row_bytes(self, head: str, state: str) -> int:
        """Estimated bytes of a window's row: key, series text, start and state."""
        return self._row_bytes + len(head) + INT_BYTES + len(state)

    def take_changes(self) -> Changes:
        """The checkpoint rows of everything changed since the last call: the rows of evicted
        series go first, so a series evicted and heard again starts from a clean slate. Call
        ``collect`` first: the windows an eviction emitted must be checkpointed with it."""
        out = Changes(evicted=list(self.evicted))
        for head, starts in self.changed.items():
            series = self.series[head]
            out.series.append((head, series.clock, series.closed))
            for start in starts:
                window = series.windows.get(start)
                if window is None:
                    out.removed.append((head, start))
                else:
                    state = _dump_window(window)
                    self._saved(window, self.window_row_bytes(head, state))
                    out.windows.append((head, start, state))
        self.changed = {}
        self.evicted = set()
        return out

    def _saved(self, window: Window, size: int) -> None:
        self.state_bytes += size - window.saved
        window.saved = size

    def load_series(self, head: str, clock: int, closed: int | None, live: float) -> None:
        self.series[head] = Series(clock, closed, heard=live)
        self.state_bytes += self.series_row_bytes(head)

    def load_window(self, head: str, start: int, text: str) -> None:
        dirty, emitted, fields = json.loads(text)
        window = self.series[head].windows[start] = Window(
            {name: Accumulator.load(acc) for name, acc in fields.items()}, dirty, emitted
        )
        self._saved(window, self.window_row_bytes(head, text))


def _dump_window(window: Window) -> str:
    fields = {name: acc.dump() for name, acc in window.fields.items()}
    return json.dumps([window.dirty, window.emitted, fields])
