"""Window logic without I/O: exact statistics, alignment, emission, lateness, checkpoints.

The property tests compare the aggregates against a straightforward reference computed from the
readings with ``statistics``, over random readings in random arrival order.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.aggregate.exact import FUNCTIONS, Accumulator, sqrt_of_fraction
from agent.aggregate.readings import read_line
from agent.aggregate.windows import NS, Changes, WindowSpec, WindowTable
from agent.parse.lineprotocol import parse_line

MIN = 60 * NS
values = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


def reference(points: list[tuple[int, float]]) -> dict[str, float | int]:
    vals = [v for _, v in points]
    ordered = sorted(points)
    out: dict[str, float | int] = {
        "count": len(vals),
        "mean": statistics.mean(vals),
        "sum": math.fsum(vals),
        "min": min(vals),
        "max": max(vals),
        "first": ordered[0][1],
        "last": ordered[-1][1],
    }
    if len(vals) > 1:
        out["stddev"] = statistics.stdev(vals)
    return out


def results(acc: Accumulator) -> dict[str, float | int]:
    out = {f: acc.result(f) for f in FUNCTIONS}
    return {k: v for k, v in out.items() if v is not None}


# --- exact statistics -------------------------------------------------------------------------
@given(st.lists(st.tuples(st.integers(0, 10**6), values), min_size=1, max_size=60), st.randoms())
def test_accumulator_matches_statistics_in_any_order(
    points: list[tuple[int, float]], rnd: random.Random
) -> None:
    acc = Accumulator()
    shuffled = points[:]
    rnd.shuffle(shuffled)
    for ts, value in shuffled:
        acc.add(ts, value)
    assert results(acc) == reference(points)
    assert results(Accumulator.load(acc.dump())) == results(acc)


def test_a_result_beyond_a_float_is_left_out() -> None:
    acc = Accumulator()
    acc.add(0, 1e308)
    acc.add(1, 1e308)
    assert acc.result("sum") is None and acc.result("mean") == 1e308
    wide = Accumulator()
    wide.add(0, 1.7e308)
    wide.add(1, -1.7e308)
    assert wide.result("stddev") is None and wide.result("mean") == 0.0


def test_stddev_of_close_large_values_does_not_cancel() -> None:
    acc = Accumulator()
    data = [293.15 + i * 1e-6 for i in range(100)]
    for i, v in enumerate(data):
        acc.add(i, v)
    assert acc.result("stddev") == statistics.stdev(data)


@given(st.integers(1, 10**40), st.integers(1, 10**40))
def test_sqrt_of_fraction_is_correctly_rounded(num: int, den: int) -> None:
    got = sqrt_of_fraction(num, den)
    exact = Fraction(num, den)
    # The true root lies between the midpoints to the float's neighbours.
    below = (Fraction(got) + Fraction(math.nextafter(got, 0.0))) / 2
    above = (Fraction(got) + Fraction(math.nextafter(got, math.inf))) / 2
    assert below**2 <= exact <= above**2


# --- alignment --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ts", "offset", "start"),
    [
        (0, 0, 0),
        (MIN - 1, 0, 0),
        (MIN, 0, MIN),
        (-1, 0, -MIN),
        (10 * NS, 15 * NS, 15 * NS - MIN),
        (15 * NS, 15 * NS, 15 * NS),
    ],
)
def test_windows_align_to_the_epoch_plus_offset(ts: int, offset: int, start: int) -> None:
    assert WindowSpec(every=MIN, offset=offset).start_of(ts) == start


# --- emission rules ---------------------------------------------------------------------------
def table(lateness: int = 10 * NS, **kw: object) -> WindowTable:
    return WindowTable(WindowSpec(every=MIN, lateness=lateness, **kw))  # type: ignore[arg-type]


def fields_of(line: str) -> dict[str, object]:
    return parse_line(line).fields


def test_window_emitted_once_the_series_clock_passes_its_end_plus_lateness() -> None:
    t = table(functions=("mean", "count"))
    t.add("m,s=a", [("v", 1.0)], 1 * NS, 0.0)
    t.add("m,s=a", [("v", 3.0)], 59 * NS, 0.0)
    t.add("m,s=a", [("v", 9.0)], MIN + 9 * NS, 0.0)
    assert t.collect(0.0).lines == []
    t.add("m,s=a", [("v", 9.0)], MIN + 10 * NS, 0.0)
    out = t.collect(0.0)
    assert out.lines == [f"m,s=a v_mean=2.0,v_count=2i {MIN}"]
    assert (out.emitted, out.reemitted) == (1, 0)


def test_late_reading_reemits_with_the_same_timestamp_then_becomes_too_late() -> None:
    t = table(functions=("sum",))
    t.add("m", [("v", 1.0)], 0, 0.0)
    t.add("m", [("v", 1.0)], MIN + 10 * NS, 0.0)
    assert t.collect(0.0).lines == [f"m v_sum=1.0 {MIN}"]
    assert t.add("m", [("v", 2.0)], 30 * NS, 0.0)  # within lateness after emission
    out = t.collect(0.0)
    assert out.lines == [f"m v_sum=3.0 {MIN}"] and out.reemitted == 1
    t.add("m", [("v", 1.0)], MIN + 20 * NS, 0.0)  # clock reaches stop + 2 x lateness
    t.collect(0.0)
    assert not t.add("m", [("v", 5.0)], 40 * NS, 0.0)
    assert t.series["m"].closed == MIN


def test_each_series_has_its_own_clock() -> None:
    t = table()
    t.add("m,s=a", [("v", 1.0)], 0, 0.0)
    t.add("m,s=b", [("v", 1.0)], 10 * MIN, 0.0)  # a sensor with a clock far ahead
    assert t.add("m,s=a", [("v", 2.0)], 30 * NS, 0.0)
    assert [line.split(" ")[0] for line in t.collect(0.0).lines] == []


def test_quiet_series_is_emitted_after_idle_and_forgotten_after_twice_that() -> None:
    t = table(lateness=5 * NS, functions=("count",))
    t.add("m", [("v", 1.0)], 0, 100.0)
    assert t.collect(104.9).lines == []
    assert t.collect(105.0).lines == [f"m v_count=1i {MIN}"]
    assert t.add("m", [("v", 1.0)], NS, 106.0)  # a straggler re-emits
    assert t.collect(111.0).lines == [f"m v_count=2i {MIN}"]
    assert t.collect(116.0).lines == [] and t.open_windows == 0
    assert not t.add("m", [("v", 1.0)], 2 * NS, 117.0)


def test_timestamp_start_and_field_names() -> None:
    t = table(functions=("min", "max", "first", "last"), stamp_at_stop=False)
    for ts, v in ((3, 5.0), (1, 7.0), (2, -1.0)):
        t.add("m,s=a", [("temp", v)], ts * NS, 0.0)
    line = t.collect(100.0).lines[0]
    assert line.endswith(" 0")
    assert fields_of(line) == {
        "temp_min": -1.0,
        "temp_max": 7.0,
        "temp_first": 7.0,
        "temp_last": 5.0,
    }


def test_stddev_of_a_single_reading_is_left_out() -> None:
    t = table(functions=("stddev",))
    t.add("m", [("v", 1.0)], 0, 0.0)
    assert t.collect(100.0).lines == []


def restore(saved: WindowTable, spec: WindowSpec | None = None) -> WindowTable:
    """A table rebuilt from everything ``saved`` has checkpointed so far."""
    changes = saved.take_changes()
    table = WindowTable(spec or saved.spec)
    for head, clock, closed in changes.series:
        table.load_series(head, clock, closed, 0.0)
    for head, start, text in changes.windows:
        table.load_window(head, start, text)
    return table


def test_checkpoint_round_trip_keeps_pending_windows() -> None:
    t = table()
    t.add("m,s=a", [("v", 1.5)], 0, 0.0)
    t.add("m,s=a", [("v", 2.5)], MIN + 10 * NS, 0.0)
    t.collect(0.0)
    restored = restore(t)
    assert restored.collect(100.0).lines == t.collect(100.0).lines
    changes = t.take_changes()
    assert sorted(changes.removed) == [
        ("m,s=a", 0),
        ("m,s=a", MIN),
    ]


def test_checkpoint_writes_only_what_changed() -> None:
    t = table(lateness=10 * MIN)
    for minute in range(5):
        t.add("m", [("v", 1.0)], minute * MIN, 0.0)
    t.take_changes()
    t.add("m", [("v", 2.0)], 4 * MIN + NS, 0.0)
    changes = t.take_changes()
    assert [start for _, start, _ in changes.windows] == [4 * MIN]
    assert changes.series == [("m", 4 * MIN + NS, None)] and changes.removed == []


# --- random readings, random arrival order, against a reference ------------------------------
reading_st = st.tuples(
    st.sampled_from(["m,s=a", "m,s=b", "n"]),
    st.integers(0, 6 * MIN),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)


def final_lines(lines: list[str]) -> dict[tuple[str, int], dict[str, object]]:
    """The server's view: the last emission of each (series, timestamp) wins."""
    out: dict[tuple[str, int], dict[str, object]] = {}
    for line in lines:
        point = parse_line(line)
        out[(line.split(" ")[0], point.ts_ns or 0)] = dict(point.fields)
    return out


def expected_lines(
    readings: list[tuple[str, int, float]], spec: WindowSpec
) -> dict[tuple[str, int], dict[str, object]]:
    groups: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    for head, ts, v in readings:
        groups[(head, spec.start_of(ts) + spec.every)].append((ts, v))
    out: dict[tuple[str, int], dict[str, object]] = {}
    for key, points in groups.items():
        ref = reference(points)
        out[key] = {f"v_{f}": ref[f] for f in spec.functions if f in ref}
    return out


@settings(max_examples=150)
@given(st.lists(reading_st, max_size=80), st.randoms(), st.integers(0, 80))
def test_random_arrival_with_a_checkpoint_equals_the_reference(
    readings: list[tuple[str, int, float]], rnd: random.Random, cut: int
) -> None:
    """Lateness covers the whole span, so every reading counts wherever it arrives; a restore
    from a checkpoint at a random point changes nothing."""
    spec = WindowSpec(every=MIN, lateness=10 * MIN, functions=FUNCTIONS)
    arrival = readings[:]
    rnd.shuffle(arrival)
    t = WindowTable(spec)
    emitted: list[str] = []
    for i, (head, ts, v) in enumerate(arrival):
        if i == cut:
            emitted += t.collect(0.0).lines
            t = restore(t)
        assert t.add(head, [("v", v)], ts, 0.0)
        if rnd.random() < 0.3:
            emitted += t.collect(0.0).lines
    emitted += t.collect(1e9).lines
    assert final_lines(emitted) == expected_lines(readings, spec)


@settings(max_examples=150)
@given(st.lists(reading_st, max_size=80), st.integers(0, 2 * MIN))
def test_too_late_follows_the_series_clock(
    arrival: list[tuple[str, int, float]], lateness: int
) -> None:
    """With a short lateness the reference keeps a reading iff its window's stop + 2L is still
    ahead of the latest timestamp its series had sent before it."""
    spec = WindowSpec(every=MIN, lateness=lateness, functions=("count", "sum"))
    t = WindowTable(spec)
    kept: list[tuple[str, int, float]] = []
    clock: dict[str, int] = {}
    emitted: list[str] = []
    for head, ts, v in arrival:
        stop = spec.start_of(ts) + spec.every
        on_time = head not in clock or stop + 2 * lateness > clock[head]
        assert t.add(head, [("v", v)], ts, 0.0) == on_time
        if on_time:
            kept.append((head, ts, v))
        clock[head] = max(clock.get(head, ts), ts)
        emitted += t.collect(0.0).lines
    emitted += t.collect(1e9).lines
    assert final_lines(emitted) == expected_lines(kept, spec)


# --- bounded series: eviction and the bytes of the checkpointed state ------------------------
class Store:
    """The checkpoint tables as dicts, written in the spool's order: evicted series, series
    clocks, window states, windows removed."""

    def __init__(self) -> None:
        self.series: dict[str, tuple[int, int | None]] = {}
        self.windows: dict[tuple[str, int], str] = {}

    def write(self, changes: Changes) -> None:
        for head in changes.evicted:
            self.series.pop(head, None)
            for key in [k for k in self.windows if k[0] == head]:
                del self.windows[key]
        for head, clock, closed in changes.series:
            self.series[head] = (clock, closed)
        for head, start, text in changes.windows:
            self.windows[(head, start)] = text
        for head, start in changes.removed:
            self.windows.pop((head, start), None)

    def bytes(self, t: WindowTable) -> int:
        """A full recount of the rows, to hold the table's running count against."""
        return sum(t.series_row_bytes(head) for head in self.series) + sum(
            t.window_row_bytes(head, text) for (head, _), text in self.windows.items()
        )

    def restore(self, spec: WindowSpec) -> WindowTable:
        t = WindowTable(spec, key_bytes=20)
        for head, (clock, closed) in self.series.items():
            t.load_series(head, clock, closed, 0.0)
        for (head, start), text in self.windows.items():
            t.load_window(head, start, text)
        return t


def test_eviction_takes_series_without_open_windows_first_least_recently_heard_first() -> None:
    t = WindowTable(WindowSpec(every=MIN, lateness=5 * NS, functions=("count",), max_series=4))
    t.add("m,s=c", [("v", 1.0)], 0, 0.0)  # heard first, its window still open
    t.add("m,s=a", [("v", 1.0)], 0, 1.0)
    t.add("m,s=b", [("v", 1.0)], 0, 2.0)
    assert len(t.collect(20.0, ["m,s=a", "m,s=b"]).lines) == 2  # a and b final: a clock left
    t.add("m,s=d", [("v", 1.0)], 0, 21.0)
    assert not t.series["m,s=a"].windows and t.series["m,s=c"].windows
    t.add("m,s=e", [("v", 1.0)], 0, 22.0)
    assert sorted(t.series) == ["m,s=b", "m,s=c", "m,s=d", "m,s=e"]
    t.add("m,s=f", [("v", 1.0)], 0, 23.0)
    assert sorted(t.series) == ["m,s=c", "m,s=d", "m,s=e", "m,s=f"]
    assert t.collect(23.0, []).evicted == 2
    # No series is left without an open window: the idlest goes, its window emitted first.
    t.add("m,s=g", [("v", 1.0)], 0, 24.0)
    assert sorted(t.series) == ["m,s=d", "m,s=e", "m,s=f", "m,s=g"]
    out = t.collect(24.0, [])
    assert (out.lines, out.emitted, out.evicted) == ([f"m,s=c v_count=1i {MIN}"], 1, 1)
    assert sorted(t.take_changes().evicted) == ["m,s=a", "m,s=b", "m,s=c"]


def test_eviction_frees_a_batch_so_one_scan_serves_many_new_series() -> None:
    t = WindowTable(WindowSpec(every=MIN, max_series=160))
    for i in range(160):
        t.add(f"m,id={i}", [("v", 1.0)], 0, float(i))
    t.add("m,id=new0", [("v", 1.0)], 0, 200.0)
    assert len(t.series) == 151 and t.collect(200.0, []).evicted == 10
    assert [f"m,id={i}" in t.series for i in (9, 10)] == [False, True]  # least recently heard
    for i in range(1, 10):
        t.add(f"m,id=new{i}", [("v", 1.0)], 0, 200.0)
    assert len(t.series) == 160 and t.collect(200.0, []).evicted == 0


def test_a_series_heard_again_after_eviction_starts_afresh_in_the_checkpoint() -> None:
    t = WindowTable(WindowSpec(every=MIN, lateness=10 * MIN, max_series=1))
    store = Store()
    t.add("m,s=a", [("v", 1.0)], 0, 0.0)
    t.add("m,s=a", [("v", 2.0)], MIN, 0.0)
    store.write(t.take_changes())
    assert len(store.windows) == 2
    t.add("m,s=b", [("v", 1.0)], 0, 1.0)  # evicts a, both its windows emitted
    assert len(t.collect(1.0, []).lines) == 2
    t.add("m,s=a", [("v", 5.0)], 2 * MIN, 2.0)  # evicts b; a comes back with a new window
    store.write(t.take_changes())
    assert store.series == {"m,s=a": (2 * MIN, None)}
    assert list(store.windows) == [("m,s=a", 2 * MIN)]
    assert t.state_bytes == store.bytes(t)


series_ops = st.lists(
    st.tuples(
        st.integers(0, 9),  # 0-6 add a reading, 7 collect, 8 checkpoint, 9 restart
        st.sampled_from([f"m,id={i}" for i in range(8)]),
        st.integers(0, 6 * MIN),
        st.floats(0.0, 8.0),  # live time passing before the step
    ),
    max_size=120,
)


@settings(max_examples=150)
@given(series_ops, st.integers(1, 5))
def test_state_bytes_kept_as_rows_come_and_go_equal_a_recount(
    ops: list[tuple[int, str, int, float]], max_series: int
) -> None:
    """After every checkpoint, and after a restart from it, the running count of the state's
    bytes equals a recount of the rows, and the table and its rows stay within max_series."""
    spec = WindowSpec(every=MIN, lateness=5 * NS, functions=("sum",), max_series=max_series)
    t = WindowTable(spec, key_bytes=20)
    store = Store()
    live = 0.0
    for action, head, ts, step in [*ops, (8, "", 0, 0.0)]:
        live += step
        if action <= 6:
            t.add(head, [("v", 1.0)], ts, live)
            assert len(t.series) <= max_series
        elif action == 7:
            t.collect(live)
        else:
            store.write(t.take_changes())
            assert t.state_bytes == store.bytes(t)
            assert set(store.series) == set(t.series)
            assert set(store.windows) == {(h, w) for h, s in t.series.items() for w in s.windows}
            if action == 9:
                t = store.restore(spec)
                assert t.state_bytes == store.bytes(t)


@settings(max_examples=150)
@given(st.lists(reading_st, max_size=80), st.randoms(), st.integers(1, 3), st.integers(0, 80))
def test_bounded_series_that_do_not_return_aggregate_exactly(
    readings: list[tuple[str, int, float]], rnd: random.Random, max_series: int, cut: int
) -> None:
    """Series arrive one after another, as with a message id for a tag: however few the table
    may hold, every reading is in its aggregate once (evicted windows are emitted first), and
    a restart from a checkpoint at a random point changes nothing."""
    spec = WindowSpec(every=MIN, lateness=10 * MIN, functions=FUNCTIONS, max_series=max_series)
    by_head: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
    for reading in readings:
        by_head[reading[0]].append(reading)
    groups = list(by_head.values())
    rnd.shuffle(groups)
    arrival = []
    for group in groups:
        rnd.shuffle(group)
        arrival += group
    t = WindowTable(spec)
    store = Store()
    emitted: list[str] = []
    for i, (head, ts, v) in enumerate(arrival):
        if i == cut:
            emitted += t.collect(0.0).lines
            store.write(t.take_changes())
            t = store.restore(spec)
        assert t.add(head, [("v", v)], ts, 0.0)
        assert len(t.series) <= max_series
        if rnd.random() < 0.3:
            emitted += t.collect(0.0).lines
            store.write(t.take_changes())
    emitted += t.collect(1e9).lines
    assert final_lines(emitted) == expected_lines(readings, spec)


# --- reading the raw stream back ----------------------------------------------------------------
def test_read_line_fast_and_strict_paths_agree() -> None:
    fast = read_line("temp,line=a,sensor=s1 value=21.5,n=3i,ok=true 1700000000000000000")
    assert fast.head == "temp,line=a,sensor=s1"
    assert fast.measurement == "temp"
    assert fast.fields == [("value", 21.5), ("n", 3.0)]
    assert fast.ts == 1700000000000000000
    strict = read_line('te\\ mp,line=a\\,b value=21.5,note="x y",n=3i 5')
    assert strict.head == "te\\ mp,line=a\\,b"
    assert strict.measurement == "te mp"
    assert strict.fields == [("value", 21.5), ("n", 3.0)]
    assert read_line("m a=nan,b=infinity,c=1 5").fields == [("c", 1.0)]
