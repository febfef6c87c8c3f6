"""Self-telemetry end to end: the agent as a subprocess, real mosquitto and InfluxDB 1.x. The
points arrive with the fixed schema; points measured while the server is down arrive once it is
back, each at the time it was measured; points measured while the wall clock reads 1971 arrive at
their true time once it is set (docs/telemetry.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from agentproc import AgentProcess, output_toml
from conftest import AgentFactory
from test_clock_steps import FakeClock
from test_e2e import wait_until

from agent.status.metrics import DROP_REASONS
from agent.tools.localservers import InfluxDB1, Mosquitto
from agent.tools.simulate import Publisher

pytestmark = pytest.mark.e2e

EVERY_SECOND = '[telemetry]\ninterval = "1s"\n'
PER_INTERVAL = 1 + 1 + len(DROP_REASONS)  # the agent's point, one output's, one per reason
NS = 1_000_000_000
# SHOW FIELD KEYS names InfluxDB's types: the schema's ints, floats and the one string.
FIELD_TYPES = {
    "received": "integer",
    "committed": "integer",
    "dead_letters": "integer",
    "mqtt_connected": "integer",
    "clock_trusted": "integer",
    "spool_bytes": "integer",
    "spool_budget_bytes": "integer",
    "rss_bytes": "integer",
    "cpu_seconds": "float",
    "uptime_seconds": "float",
    "version": "string",
    "backlog_lines": "integer",
    "backlog_bytes": "integer",
    "oldest_age_seconds": "float",
    "last_success_age_seconds": "float",
    "healthy": "integer",
    "lines_sent": "integer",
    "bytes_sent": "integer",
    "dropped": "integer",
}


def start_agent(
    make_agent: AgentFactory, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> AgentProcess:
    influxdb.create_database("plants")
    output = output_toml("cloud", influxdb.url, "v1", flush_interval="0.1s", retry_max_backoff="1s")
    return make_agent(mosquitto.url, output, extra=EVERY_SECOND + '[spool]\nmax_age = "1h"\n')


def kinds(
    influxdb: InfluxDB1,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The agent's points, the output's and the reasons', each time-ordered."""
    rows = influxdb.rows("plants", "edge_agent")
    return (
        [r for r in rows if not r.get("output") and not r.get("reason")],
        [r for r in rows if r.get("output")],
        [r for r in rows if r.get("reason")],
    )


def agent_points(influxdb: InfluxDB1) -> list[dict[str, Any]]:
    return kinds(influxdb)[0]


def assert_stamped_when_measured(points: list[dict[str, Any]]) -> None:
    """Each point's time minus its uptime is the agent's start: the same for every point,
    whenever the point was sent (or held for the clock and placed)."""
    starts = [p["time"] / NS - p["uptime_seconds"] for p in points]
    first = starts[0]
    off = [(p, start - first) for p, start in zip(points, starts, strict=True)]
    assert max(starts) - min(starts) < 0.5, (
        f"not at its measurement time: {[o for o in off if abs(o[1]) > 0.25]}"
    )


def test_telemetry_arrives_with_its_tags_and_typed_fields(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    agent = start_agent(make_agent, mosquitto, influxdb)
    agent.start()
    pub = Publisher(mosquitto.url, "publisher", qos=1)
    for i in range(10):
        pub.publish(f"plant/l1/sensor/s{i}/temperature", str(i))
    pub.publish("plant/l1/sensor/s1/temperature", "")  # set aside: malformed
    pub.publish("plant/l1/sensor/s2/temperature", "")
    assert pub.wait_acked(12, timeout=20)
    pub.close()

    def caught_up() -> bool:
        mine = agent_points(influxdb)
        return bool(mine) and mine[-1]["received"] == 12 and mine[-1]["clock_trusted"] == 1

    wait_until(caught_up, 30, "a point that counts every message", agent)
    time.sleep(1.5)  # one more interval: the output has sent the readings by now
    assert agent.stop() == 0

    mine, outputs, reasons = kinds(influxdb)
    last = mine[-1]
    assert (last["agent"], last["plant"]) == ("test", "p001")
    assert (last["received"], last["committed"], last["dead_letters"]) == (12, 10, 2)
    assert (last["mqtt_connected"], last["clock_trusted"]) == (1, 1)
    assert last["spool_budget_bytes"] == 1 << 30
    assert 10 << 20 < last["rss_bytes"] < 1 << 30
    assert 0 < last["cpu_seconds"] < last["uptime_seconds"] < 60
    assert last["version"] == "0.1.0"
    assert_stamped_when_measured(mine)

    cloud = outputs[-1]
    assert (cloud["output"], cloud["agent"], cloud["plant"]) == ("cloud", "test", "p001")
    assert cloud["healthy"] == 1 and cloud["dead_letters"] == 0
    assert cloud["lines_sent"] >= 10 and cloud["bytes_sent"] > 0
    assert 0 <= cloud["last_success_age_seconds"] < 5
    assert outputs[0]["last_success_age_seconds"] is None  # measured before any write

    at_last = {r["reason"]: r["dropped"] for r in reasons if r["time"] == last["time"]}
    assert at_last == {reason: 2 if reason == "malformed" else 0 for reason in DROP_REASONS}
    assert len(mine) * PER_INTERVAL == len(mine) + len(outputs) + len(reasons)

    fields = influxdb.query("plants", "SHOW FIELD KEYS FROM edge_agent")
    assert dict(fields["results"][0]["series"][0]["values"]) == FIELD_TYPES
    tags = influxdb.query("plants", "SHOW TAG KEYS FROM edge_agent")
    assert {v[0] for v in tags["results"][0]["series"][0]["values"]} == {
        "agent",
        "output",
        "plant",
        "reason",
    }
    assert influxdb.count("plants", "temperature") == 10  # readings are where they were
    assert_documented_queries_answer(influxdb)


def assert_documented_queries_answer(influxdb: InfluxDB1) -> None:
    """The example queries of docs/telemetry.md, as a dashboard would run them."""
    text = (Path(__file__).parent.parent / "docs" / "telemetry.md").read_text()
    block = text.split("```sql\n", 1)[1].split("```", 1)[0]
    queries = [" ".join(q.split()) for q in block.split("--")[1:]]
    answers = []
    for query in queries:
        select = query[query.index("SELECT") :].replace("$timeFilter", "time > now() - 1h")
        select = select.replace("$__interval", "1s")  # Grafana's; the test ran for seconds
        result = influxdb.query("plants", select)["results"][0]
        answers.append({s["tags"][k] for s in result["series"] for k in s["tags"]})
    received, backlog, drops = answers
    assert received == {"test"}  # one series: the agent's points, no output or reason
    assert backlog == {"test", "cloud"}
    assert drops == {"test", *DROP_REASONS}


def test_points_measured_during_an_outage_arrive_afterwards_at_their_own_times(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    agent = start_agent(make_agent, mosquitto, influxdb)
    agent.start()
    wait_until(lambda: len(agent_points(influxdb)) >= 2, 20, "the first points", agent)
    wait_until(lambda: agent.metric("edge_clock_trusted") == 1, 20, "a confirmed clock", agent)

    down = time.time_ns()
    influxdb.kill()
    time.sleep(8)
    up = time.time_ns()
    influxdb.start()
    wait_until(
        lambda: any(p["time"] > up + NS for p in agent_points(influxdb)),
        30,
        "points after the outage",
        agent,
    )
    # Every point written before this cut has arrived: at most one more (stamped before the
    # cut, counted after it) may be in the count below.
    cut = time.time_ns()
    written = agent.metric('edge_telemetry_points_total{result="written"}')
    assert written % PER_INTERVAL == 0
    ticks = int(written) // PER_INTERVAL
    wait_until(
        lambda: len([p for p in agent_points(influxdb) if p["time"] < cut]) >= ticks,
        30,
        f"{ticks} points measured before the cut",
        agent,
    )
    assert agent.stop() == 0

    mine, outputs, _ = kinds(influxdb)
    assert ticks <= len([p for p in mine if p["time"] < cut]) <= ticks + 1
    assert_stamped_when_measured(mine)
    during = [p for p in mine if down < p["time"] < up]
    assert 7 <= len(during) <= 9, f"{len(during)} points measured in 8 s at 1 s"
    # What the points tell about the outage: the backlog grew and the last success aged.
    cloud = [o for o in outputs if down + 2 * NS < o["time"] < up]
    assert cloud and all(o["backlog_lines"] > 0 and o["backlog_bytes"] > 0 for o in cloud)
    ages = [o["last_success_age_seconds"] for o in cloud]
    assert ages == sorted(ages) and ages[-1] > 5
    assert cloud[-1]["oldest_age_seconds"] > 5
    spool = [p["spool_bytes"] for p in during if p["time"] > down + 2 * NS]
    assert spool == sorted(spool) and 0 < spool[0] < spool[-1] < 1 << 20


def test_points_measured_while_the_clock_reads_1971_arrive_at_their_true_time(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB1,
    make_agent: AgentFactory,
    libfaketime: str,
) -> None:
    clock = FakeClock(tmp_path / "faketime", libfaketime)
    clock.set("-20500d")
    agent = start_agent(make_agent, mosquitto, influxdb)
    agent.env = clock.env
    began = time.time_ns()
    agent.start()
    wait_until(
        lambda: agent.metric('edge_spool_lines{stream="held_telemetry"}') >= 3 * PER_INTERVAL,
        20,
        "three intervals held",
        agent,
    )
    assert agent.metric('edge_spool_lines{stream="held"}') == 0  # no reading among them
    assert influxdb.count("plants", "edge_agent", "received") == 0
    clock.set("+0")  # NTP steps the clock to today
    wait_until(
        lambda: {p["clock_trusted"] for p in agent_points(influxdb)} == {0, 1},
        30,
        "the held points and one after the clock was set",
        agent,
    )
    assert agent.stop() == 0
    ended = time.time_ns()
    mine = agent_points(influxdb)
    held = [p for p in mine if p["clock_trusted"] == 0]
    assert len(held) >= 3
    assert all(began - NS < p["time"] < ended for p in mine), "a point stamped off today"
    assert_stamped_when_measured(mine)
