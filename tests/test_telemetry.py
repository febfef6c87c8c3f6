"""Self-telemetry without sockets: the fixed schema (names, tags, field types), the config, the
spool's view of a backlog, and the stage against a real spool file with the clock held and then
confirmed (agent/status/telemetry.py, agent/status/reporter.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.clock import hold
from agent.clock.trust import NS, ClockTrust
from agent.clock.watch import ClockWatch, sample
from agent.config import Config, ConfigError, load_config
from agent.parse.lineprotocol import parse_line
from agent.spool.budget import Budget, ChunkInfo, plan_drops
from agent.spool.store import Body, Position, Spool
from agent.status.metrics import DROP_REASONS, TELEMETRY, Metrics
from agent.status.reporter import Reporter
from agent.status.telemetry import AgentHealth, Health, OutputHealth, points

STAMP = 1_795_000_000_000_000_000
AGENT = AgentHealth(
    received=120,
    committed=118,
    dead_letters=2,
    mqtt_connected=True,
    clock_trusted=False,
    spool_bytes=40_960,
    spool_budget_bytes=1 << 30,
    rss_bytes=52_000_000,
    cpu_seconds=3,  # an integral value still goes out as a float
    uptime_seconds=61.5,
    version="0.1.0",
)
CLOUD = OutputHealth(
    name="cloud",
    backlog_lines=7,
    backlog_bytes=300,
    oldest_age_seconds=2.25,
    last_success_age_seconds=0.5,
    healthy=True,
    lines_sent=111,
    bytes_sent=4_096,
    dead_letters=1,
)
NEVER = OutputHealth("spare", 118, 5_000, 60.0, None, False, 0, 0, 0)

# The contract dashboards and alerts are written against (docs/telemetry.md): a rename or a type
# change here breaks them.
AGENT_FIELDS = {
    "received": int,
    "committed": int,
    "dead_letters": int,
    "mqtt_connected": int,
    "clock_trusted": int,
    "spool_bytes": int,
    "spool_budget_bytes": int,
    "rss_bytes": int,
    "cpu_seconds": float,
    "uptime_seconds": float,
    "version": str,
}
OUTPUT_FIELDS = {
    "backlog_lines": int,
    "backlog_bytes": int,
    "oldest_age_seconds": float,
    "last_success_age_seconds": float,
    "healthy": int,
    "lines_sent": int,
    "bytes_sent": int,
    "dead_letters": int,
}


def test_the_points_of_one_interval_exactly() -> None:
    health = Health(AGENT, [CLOUD, NEVER], {"max_size": 3, "malformed": 2})
    got = points("plant-001", {"plant": "p001", "site": "lyon"}, health, STAMP)
    tags = "agent=plant-001,plant=p001,site=lyon"

    def head(tag: str) -> str:  # tags sorted by key, as InfluxDB keys its series
        return "edge_agent," + ",".join(sorted([*tags.split(","), tag]))

    assert got == [
        f"edge_agent,{tags} received=120i,committed=118i,dead_letters=2i,mqtt_connected=1i,"
        "clock_trusted=0i,spool_bytes=40960i,spool_budget_bytes=1073741824i,rss_bytes=52000000i,"
        f'cpu_seconds=3.0,uptime_seconds=61.5,version="0.1.0" {STAMP}',
        f"{head('output=cloud')} backlog_lines=7i,backlog_bytes=300i,"
        "oldest_age_seconds=2.25,last_success_age_seconds=0.5,healthy=1i,lines_sent=111i,"
        f"bytes_sent=4096i,dead_letters=1i {STAMP}",
        f"{head('output=spare')} backlog_lines=118i,backlog_bytes=5000i,"
        "oldest_age_seconds=60.0,healthy=0i,lines_sent=0i,bytes_sent=0i,dead_letters=0i "
        f"{STAMP}",
        f"{head('reason=malformed')} dropped=2i {STAMP}",
        f"{head('reason=max_size')} dropped=3i {STAMP}",
        f"{head('reason=max_age')} dropped=0i {STAMP}",
        f"{head('reason=min_free_disk')} dropped=0i {STAMP}",
        f"{head('reason=dead_letter')} dropped=0i {STAMP}",
    ]


def test_every_known_reason_is_written_and_others_once_counted() -> None:
    def reasons(dropped: dict[str, int]) -> list[str]:
        lines = points("a", {}, Health(AGENT, [], dropped), STAMP)[1:]
        return [parse_line(line).tags["reason"] for line in lines]

    assert reasons({}) == list(DROP_REASONS)
    assert reasons({"newfangled": 0}) == list(DROP_REASONS)
    assert reasons({"newfangled": 4}) == [*DROP_REASONS, "newfangled"]


def test_the_points_own_tags_win_over_agent_tags() -> None:
    tags = {"agent": "impostor", "output": "x", "reason": "y", "plant": "p 1,a=b"}
    health = Health(AGENT, [CLOUD], {})
    parsed = [parse_line(line) for line in points("gw=1", tags, health, STAMP)]
    assert parsed[0].tags == {"agent": "gw=1", "output": "x", "reason": "y", "plant": "p 1,a=b"}
    assert parsed[1].tags["output"] == "cloud" and parsed[1].tags["agent"] == "gw=1"
    assert parsed[2].tags["reason"] == "malformed" and parsed[2].tags["output"] == "x"


counts = st.integers(min_value=0, max_value=2**62)
seconds = st.one_of(st.integers(0, 10**9), st.floats(0, 1e12, allow_nan=False))


@given(
    st.builds(
        AgentHealth,
        counts,
        counts,
        counts,
        st.booleans(),
        st.booleans(),
        counts,
        counts,
        counts,
        seconds,
        seconds,
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20),
    ),
    st.builds(
        OutputHealth,
        st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True),
        counts,
        counts,
        seconds,
        st.none() | seconds,
        st.booleans(),
        counts,
        counts,
        counts,
    ),
    st.dictionaries(st.sampled_from(DROP_REASONS), counts),
)
def test_field_types_never_change(
    agent: AgentHealth, output: OutputHealth, dropped: dict[str, int]
) -> None:
    """InfluxDB refuses a field whose type changed: whatever the values, the types are fixed."""
    agent_point, output_point, *reason_points = (
        parse_line(line) for line in points("gw", {}, Health(agent, [output], dropped), STAMP)
    )
    assert {k: type(v) for k, v in agent_point.fields.items()} == AGENT_FIELDS
    expected = dict(OUTPUT_FIELDS)
    if output.last_success_age_seconds is None:
        del expected["last_success_age_seconds"]
    assert {k: type(v) for k, v in output_point.fields.items()} == expected
    assert all({k: type(v) for k, v in p.fields.items()} == {"dropped": int} for p in reason_points)
    assert {p.ts_ns for p in (agent_point, output_point, *reason_points)} == {STAMP}


# --- config -----------------------------------------------------------------------------------

BASE = """
[agent]
name = "gw"
data_dir = "{data}"
[mqtt]
[[mqtt.subscriptions]]
topic = "plant/{{sensor}}"
[[outputs]]
name = "cloud"
url = "http://127.0.0.1:8086"
api = "v1"
database = "plants"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(BASE.format(data=tmp_path / "data"))
    return path


def test_on_by_default_every_30_s_for_every_output(config: Path) -> None:
    cfg = load_config(config)
    assert cfg.telemetry.interval == 30.0
    assert cfg.outputs[0].streams == ["raw", "telemetry"]


@pytest.mark.parametrize(("value", "interval"), [("0", 0.0), ("1s", 1.0), ("500ms", 0.5)])
def test_the_interval_from_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch, value: str, interval: float
) -> None:
    monkeypatch.setenv("EDGE_TELEMETRY__INTERVAL", value)
    assert load_config(config).telemetry.interval == interval


def test_the_interval_and_the_stream_in_the_file(config: Path) -> None:
    text = config.read_text().replace(
        'database = "plants"', 'database = "p"\nstreams = ["telemetry"]'
    )
    config.write_text(text + '[telemetry]\ninterval = "1m"\n')
    cfg = load_config(config)
    assert cfg.telemetry.interval == 60.0 and cfg.outputs[0].streams == ["telemetry"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[telemetry]\ninterval = "10ms"\n', r"telemetry.interval: must be 0 \(off\)"),
        ("[telemetry]\nevery = 5\n", "telemetry.every: unknown key"),
    ],
)
def test_bad_telemetry_settings_are_named(config: Path, extra: str, message: str) -> None:
    config.write_text(config.read_text() + extra)
    with pytest.raises(ConfigError, match=message):
        load_config(config)


# --- the spool's view of a backlog ----------------------------------------------------------------

BUDGET = Budget(max_size=1 << 30, max_age=86400, min_free_disk=0, when_full="drop_oldest")


async def test_pending_counts_lines_stored_bytes_and_the_oldest_unsent_chunk(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool.db", BUDGET, "normal")
    await spool.open()
    await spool.register({"out": ["raw"]})
    start = await spool.cursor("out", "raw")
    for n in range(3):
        await spool.ingest("raw", [f"m v={n}{i} {i}" for i in range(10)])
    whole = await spool.pending("raw", start)
    stored = sum(s.bytes for s in spool.stats.values())
    assert (whole.lines, whole.stored) == (30, stored)
    assert whole.oldest is not None and whole.oldest <= spool.age.now()
    halfway = await spool.pending("raw", Position(start.chunk + 1, 5))
    assert halfway.lines == 15
    assert stored // 3 < halfway.stored < stored * 2 // 3  # the middle chunk pro rata
    assert halfway.oldest is not None and halfway.oldest >= whole.oldest
    caught_up = await spool.pending("raw", Position(start.chunk + 3, 0))
    assert (caught_up.lines, caught_up.stored, caught_up.oldest) == (0, 0, None)
    await spool.close()


# --- the stage: held while the clock is unconfirmed, placed once it is ----------------------------


async def stage(tmp_path: Path) -> tuple[Reporter, Spool, Metrics]:
    cfg = Config.model_validate(
        {
            "agent": {"name": "gw", "data_dir": str(tmp_path), "tags": {"plant": "p001"}},
            "mqtt": {"subscriptions": [{"topic": "plant/{sensor}"}]},
            "outputs": [
                {"name": "cloud", "url": "http://127.0.0.1:9", "api": "v1", "database": "p"}
            ],
        }
    )
    spool = Spool(tmp_path / "spool.db", BUDGET, "normal")
    await spool.open()
    await spool.register({"cloud": [TELEMETRY]})
    metrics = Metrics()
    trust = ClockTrust("verify", 2.0, boot=7)  # confirmed by nothing until the test says so
    watch = ClockWatch(trust, spool, metrics, [], lambda: None)
    reporter = Reporter(cfg, spool, metrics, watch, [], lambda: True, time.monotonic())
    return reporter, spool, metrics


async def telemetry_lines(spool: Spool, stream: str) -> list[bytes]:
    return (await spool.read(stream, Position(0, 0), 1000, 1 << 20)).lines


async def test_points_are_held_on_the_boot_clock_and_placed_at_their_true_time(
    tmp_path: Path,
) -> None:
    reporter, spool, metrics = await stage(tmp_path)
    held = hold.stream_of(7, TELEMETRY)
    measured = time.time_ns()
    await reporter.report()
    assert await telemetry_lines(spool, TELEMETRY) == []
    marked = await telemetry_lines(spool, held)
    assert len(marked) == 1 + len(DROP_REASONS)
    assert all(line.startswith(hold.BOOT_STAMPED) for line in marked)
    assert spool.streams_like(hold.PREFIX) == [held]
    assert hold.label(held) == "held_telemetry"

    trust = reporter.clock_watch.trust
    assert trust.server_time(time.time(), sample(), sample(), "a server") == "trusted"
    await reporter.report()
    assert spool.streams_like(hold.PREFIX) == []
    sent = [parse_line(line.decode()) for line in await telemetry_lines(spool, TELEMETRY)]
    assert len(sent) == 2 * (1 + len(DROP_REASONS))
    first, second = sent[0], sent[1 + len(DROP_REASONS)]
    assert first.fields["clock_trusted"] == 0 and second.fields["clock_trusted"] == 1
    assert first.ts_ns is not None and second.ts_ns is not None
    assert abs(first.ts_ns - measured) < NS // 2  # the boot stamp, placed on the wall clock
    assert first.ts_ns < second.ts_ns <= time.time_ns()
    assert first.tags == {"agent": "gw", "plant": "p001"}
    assert metrics.registry.get_sample_value(
        "edge_telemetry_points_total", {"result": "written"}
    ) == len(sent)
    await spool.close()


async def test_points_held_in_an_earlier_unconfirmed_boot_are_discarded_and_counted(
    tmp_path: Path,
) -> None:
    reporter, spool, metrics = await stage(tmp_path)
    earlier = hold.stream_of(6, TELEMETRY)
    await spool.commit({earlier: Body(b"B edge_agent,agent=gw received=1i 5000000000", 1)})
    assert reporter.clock_watch.trust.server_time(time.time(), sample(), sample(), "s")
    await reporter.report()
    assert spool.streams_like(hold.PREFIX) == []
    assert len(await telemetry_lines(spool, TELEMETRY)) == 1 + len(DROP_REASONS)  # today's only
    assert (
        metrics.registry.get_sample_value("edge_telemetry_points_total", {"result": "unplaceable"})
        == 1
    )
    await spool.close()


def test_the_budget_gives_up_readings_before_telemetry_held_or_not() -> None:
    chunks = [
        ChunkInfo(1, hold.stream_of(1, TELEMETRY), 0.0, 100),
        ChunkInfo(2, TELEMETRY, 0.0, 100),
        ChunkInfo(3, "aggregates", 0.0, 100),
        ChunkInfo(4, hold.stream_of(1), 0.0, 100),
        ChunkInfo(5, "raw", 0.0, 100),
    ]
    plan = plan_drops(Budget(450, 3600, 0, "drop_oldest"), chunks, 500, 150, 1 << 30, 10.0)
    assert plan.drop == ((4, "max_size"), (5, "max_size"))
    plan = plan_drops(Budget(350, 3600, 0, "drop_oldest"), chunks, 500, 150, 1 << 30, 10.0)
    assert plan.drop == ((4, "max_size"), (5, "max_size"), (1, "max_size"))


def test_telemetry_the_budget_gave_up_is_not_counted_as_readings() -> None:
    metrics = Metrics()
    metrics.spool_dropped(hold.stream_of(1, TELEMETRY), "max_size", 7)
    metrics.spool_dropped(TELEMETRY, "max_age", 7)
    metrics.spool_dropped(hold.stream_of(1), "max_size", 3)
    metrics.spool_dropped("raw", "max_size", 2)
    value = metrics.registry.get_sample_value
    assert value("edge_readings_dropped_total", {"reason": "max_size"}) == 5
    assert value("edge_readings_dropped_total", {"reason": "max_age"}) is None
    assert value("edge_telemetry_points_total", {"result": "dropped"}) == 14


def test_held_streams_of_readings_and_of_telemetry_are_told_apart() -> None:
    streams = [hold.stream_of(1), hold.stream_of(1, TELEMETRY), hold.stream_of(2)]
    assert streams == ["held:1", "held:1:telemetry", "held:2"]
    assert [hold.boot_of(s) for s in streams] == [1, 1, 2]
    assert hold.placed_into(streams, "raw") == ["held:1", "held:2"]
    assert hold.placed_into(streams, TELEMETRY) == ["held:1:telemetry"]
    assert [hold.label(s) for s in (*streams, "raw")] == ["held", "held_telemetry", "held", "raw"]
    assert hold.target_of("raw") is None
