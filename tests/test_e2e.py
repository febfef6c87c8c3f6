"""End to end: real mosquitto, real servers, the agent as a subprocess, crashes and outages.

Each reading carries a unique sequence number as its value, so the server's contents can be
checked exactly: every reading present, none twice, none with a second timestamp.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from agentproc import AgentProcess, output_toml
from conftest import AgentFactory

from agent.tools.localservers import InfluxDB1, Mosquitto, VictoriaMetrics
from agent.tools.simulate import Publisher

pytestmark = pytest.mark.e2e

N = 20_000
RATE = 2_000.0  # readings/s: the run spans ~10 s of events


def topic_for(seq: int) -> str:
    return f"plant/line-{seq % 2}/sensor/s{seq % 50:02d}/temperature"


def publish(url: str, n: int, rate: float, done: threading.Event, client_id: str) -> None:
    """QoS 1, value = sequence number, 50 sensors on 2 lines; returns once all are acked."""
    pub = Publisher(url, client_id, qos=1)
    start = time.monotonic()
    for seq in range(n):
        pub.publish(topic_for(seq), str(seq))
        if seq % 200 == 0:
            time.sleep(max(0.0, start + seq / rate - time.monotonic()))
    assert pub.wait_acked(n, timeout=120), f"broker acknowledged only {pub.acked} of {n}"
    pub.close()
    done.set()


def run_schedule(events: list[tuple[float, Callable[[], None]]]) -> None:
    start = time.monotonic()
    for at, action in events:
        time.sleep(max(0.0, start + at - time.monotonic()))
        action()


def wait_until(check: Callable[[], bool], timeout: float, what: str, agent: AgentProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    try:
        state = {k: v for k, v in agent.metrics().items() if k.startswith("edge_")}
    except OSError as exc:
        state = {"metrics unavailable": str(exc)}
    raise AssertionError(
        f"timed out waiting for {what}\n--- agent metrics ---\n{state}"
        f"\n--- agent log ---\n{agent.log_tail()}"
    )


def kills_and_outage(
    agent: AgentProcess, mqtt_url: str, take_down: Callable[[], None], bring_up: Callable[[], None]
) -> None:
    """N readings published while the agent is SIGKILLed twice and the server is down 20 s."""
    agent.start()
    done = threading.Event()
    publisher = threading.Thread(
        target=publish, args=(mqtt_url, N, RATE, done, "publisher"), daemon=True
    )
    publisher.start()
    run_schedule(
        [
            (2.0, agent.kill),
            (2.3, agent.start),
            (4.0, take_down),
            (6.0, agent.kill),
            (6.2, agent.start),
            (24.0, bring_up),
        ]
    )
    publisher.join(timeout=120)
    assert done.is_set()


def influx_values(influx: InfluxDB1) -> list[tuple[int, float]]:
    return [(row["time"], row["value"]) for row in influx.rows("plants", "temperature")]


def assert_exact_influx(influx: InfluxDB1) -> None:
    rows = influx_values(influx)
    values = sorted(int(v) for _, v in rows)
    missing = sorted(set(range(N)) - set(values))
    assert len(rows) == N, f"{len(rows)} points, expected {N}; missing: {missing[:50]}"
    assert values == list(range(N)), "a reading is missing or stored twice"
    assert len({t for t, _ in rows}) == N


def test_kills_and_server_outage_lose_nothing_influxdb(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    influxdb.create_database("plants")
    agent = make_agent(
        mosquitto.url,
        output_toml(
            "cloud",
            influxdb.url,
            "v1",
            batch_size=2000,
            flush_interval="0.2s",
            retry_max_backoff="1s",
        ),
    )
    # InfluxDB survives SIGKILL (its WAL is fsynced): kill it.
    kills_and_outage(agent, mosquitto.url, influxdb.kill, influxdb.start)
    wait_until(lambda: influxdb.count("plants", "temperature") >= N, 90, "all points", agent)
    assert agent.stop() == 0
    assert_exact_influx(influxdb)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_restart_mid_stream_loses_nothing(
    mosquitto: Mosquitto,
    influxdb: InfluxDB1,
    make_agent: AgentFactory,
    protocol: str,
) -> None:
    influxdb.create_database("plants")
    agent = make_agent(
        mosquitto.url,
        output_toml("cloud", influxdb.url, "v1", batch_size=2000, flush_interval="0.2s"),
        mqtt_extra=f'protocol = "{protocol}"',
    )
    agent.start()
    # The publisher itself must survive the broker restart: publish in two halves around it.
    done = threading.Event()
    publish(mosquitto.url, N // 2, RATE * 2, done, "pub-a")
    mosquitto.restart()
    half = N // 2
    pub = Publisher(mosquitto.url, "pub-b", qos=1)
    for seq in range(half, N):
        pub.publish(topic_for(seq), str(seq))
        if seq == half + 3000:
            agent.kill()
            agent.start()
    assert pub.wait_acked(N - half, timeout=60)
    pub.close()
    wait_until(lambda: influxdb.count("plants", "temperature") >= N, 90, "all points", agent)
    assert agent.metric('edge_mqtt_connects_total{result="ok"}') >= 1
    assert agent.stop() == 0
    assert_exact_influx(influxdb)


def test_kills_and_server_outage_lose_nothing_victoriametrics(
    mosquitto: Mosquitto,
    victoria: VictoriaMetrics,
    make_agent: AgentFactory,
) -> None:
    agent = make_agent(
        mosquitto.url,
        output_toml(
            "cloud",
            victoria.url,
            "v2",
            batch_size=2000,
            flush_interval="0.2s",
            retry_max_backoff="1s",
        ),
    )
    # VM keeps acknowledged rows in memory for a moment: stop it gracefully.
    kills_and_outage(agent, mosquitto.url, victoria.stop, victoria.start)

    def distinct() -> set[float]:
        return {v for s in victoria.export('{__name__="temperature_value"}') for v in s["values"]}

    wait_until(lambda: len(distinct()) >= N, 90, "all samples", agent)
    assert agent.stop() == 0
    series = victoria.export('{__name__="temperature_value"}')
    pairs = {(t, v) for s in series for t, v in zip(s["timestamps"], s["values"], strict=True)}
    values = sorted(int(v) for _, v in pairs)
    # VM keeps a resent sample twice (no upsert), so compare distinct (time, value) pairs: each
    # reading must appear with exactly one timestamp.
    assert values == list(range(N))


def test_sigterm_during_outage_exits_cleanly_and_keeps_everything(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    influxdb.create_database("plants")
    agent = make_agent(
        mosquitto.url,
        output_toml("cloud", influxdb.url, "v1", batch_size=500, flush_interval="0.1s"),
    )
    agent.start()
    influxdb.kill()
    n = 5_000
    done = threading.Event()
    publish(mosquitto.url, n, RATE, done, "publisher")
    wait_until(lambda: agent.metric("edge_readings_committed_total") >= n, 30, "commits", agent)
    began = time.monotonic()
    assert agent.stop(timeout=20) == 0  # every in-flight slot is stuck retrying
    assert time.monotonic() - began < 15  # shutdown_grace is 5 s
    influxdb.start()
    agent.start()
    wait_until(lambda: influxdb.count("plants", "temperature") >= n, 60, "all points", agent)
    assert agent.stop() == 0
    assert sorted(int(v) for _, v in influx_values(influxdb)) == list(range(n))


def test_malformed_payloads_are_set_aside_and_good_ones_flow(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    influxdb.create_database("plants")
    agent = make_agent(
        mosquitto.url,
        output_toml("cloud", influxdb.url, "v1", flush_interval="0.1s"),
    )
    agent.start()
    pub = Publisher(mosquitto.url, "mixed", qos=1)
    bad = [b"", b"\xff\xfe", b"   "]
    for i in range(300):
        pub.publish(f"plant/line-1/sensor/s{i % 3}/temperature", str(i))
        if i % 100 == 0:
            for payload in bad:
                pub.client.publish("plant/line-1/sensor/s9/temperature", payload, qos=1)
    assert pub.wait_acked(300, timeout=30)
    pub.close()
    wait_until(lambda: influxdb.count("plants", "temperature") >= 300, 30, "good points", agent)
    wait_until(lambda: agent.metric("edge_readings_dropped_total") >= 9, 10, "drops", agent)
    assert agent.metric('edge_readings_dropped_total{reason="malformed"}') == 9
    dead = (tmp_path / "agent" / "data" / "dead-letters" / "ingest.jsonl").read_text().splitlines()
    assert len(dead) == 9
    assert {json.loads(x)["reason"] for x in dead} == {"empty", "not_utf8"}
    assert agent.stop() == 0
    assert influxdb.count("plants", "temperature") == 300


@pytest.mark.parametrize("policy", ["drop_oldest", "block"])
def test_spool_budget_during_outage_is_exactly_accounted(
    mosquitto: Mosquitto,
    influxdb: InfluxDB1,
    make_agent: AgentFactory,
    policy: str,
) -> None:
    """A 16 KiB spool (compressed, about 1,500 readings) and the server down: drop_oldest
    keeps the newest readings and counts every dropped one; block leaves the surplus at the
    broker and loses nothing."""
    influxdb.create_database("plants")
    agent = make_agent(
        mosquitto.url,
        output_toml("cloud", influxdb.url, "v1", flush_interval="0.1s", retry_max_backoff="0.5s"),
        extra=f'[spool]\nmax_size = "16KiB"\nwhen_full = "{policy}"\n',
    )
    agent.start()
    influxdb.kill()
    n = 5_000
    publish(mosquitto.url, n, RATE, threading.Event(), "publisher")
    if policy == "drop_oldest":
        wait_until(lambda: agent.metric("edge_readings_committed_total") >= n, 30, "commits", agent)
        dropped = agent.metric('edge_readings_dropped_total{reason="max_size"}')
        assert 0 < dropped < n
    else:
        wait_until(lambda: agent.metric("edge_intake_blocked") == 1, 30, "blocking", agent)
        dropped = 0
    assert agent.metric("edge_spool_bytes") <= 16 * 1024
    influxdb.start()
    kept = n - int(dropped)
    wait_until(lambda: influxdb.count("plants", "temperature") >= kept, 60, "points", agent)
    assert agent.stop() == 0
    values = sorted(int(v) for _, v in influx_values(influxdb))
    # Every reading is either delivered exactly once or counted as dropped; the newest are kept
    # (the oldest may still arrive: batches already in flight when their chunk was dropped).
    assert len(values) == len(set(values)) == kept
    assert values[-min(kept, 500) :] == list(range(n - min(kept, 500), n))
