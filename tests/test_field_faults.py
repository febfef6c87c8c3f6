"""Field faults, one at a time: real mosquitto and InfluxDB, the agent as a subprocess. Each test
pins one finding of the field report (issue 7); each failed on the agent before it was fixed
(a crash loop, a frozen series, a parsed 200 MB payload, a relabelled plant, a hang, a crash)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from agentproc import AgentProcess, output_toml
from conftest import AgentFactory
from test_e2e import influx_values, publish, wait_until

from agent.tools.localservers import InfluxDB1, Mosquitto
from agent.tools.simulate import Publisher

pytestmark = pytest.mark.e2e

JSON_SUB = """
[[mqtt.subscriptions]]
topic = "json/{sensor}"
format = "json"
measurement = "j"
"""
INFLUX_SUB = """
[[mqtt.subscriptions]]
topic = "lp/{sensor}"
format = "influx"
"""


def dead_letters(agent: AgentProcess, name: str = "ingest.jsonl") -> list[dict[str, Any]]:
    path = agent.workdir / "data" / "dead-letters" / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def publish_raw(url: str, messages: list[tuple[str, bytes]]) -> None:
    pub = Publisher(url, "raw-publisher", qos=1)
    for topic, payload in messages:
        pub.client.publish(topic, payload, qos=1)
        pub.sent += 1
    assert pub.wait_acked(len(messages), timeout=30)
    pub.close()


def cloud(influxdb: InfluxDB1, **extra: Any) -> str:
    influxdb.create_database("plants")
    return output_toml("cloud", influxdb.url, "v1", flush_interval="0.1s", **extra)


def test_a_poison_message_is_set_aside_acknowledged_and_never_comes_back(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    """JSON escapes make text UTF-8 cannot carry: it used to pass json.loads and crash the spool's
    encode, unacknowledged, so the broker sent it again after every restart."""
    agent = make_agent(mosquitto.url, cloud(influxdb), extra=JSON_SUB)
    agent.start()
    publish_raw(
        mosquitto.url,
        [
            ("json/a", b'{"v": 1, "s": "\\ud800"}'),
            ("json/a", b'{"\\udfff": 1}'),
            ("json/a", b'{"v": 2}'),
        ],
    )
    wait_until(lambda: influxdb.count("plants", "j", "v") == 1, 20, "the good reading", agent)
    assert agent.proc is not None and agent.proc.poll() is None
    assert [d["reason"] for d in dead_letters(agent)] == ["unrepresentable"] * 2
    assert agent.metric('edge_ingest_rejected_total{reason="unrepresentable"}') == 2
    assert agent.stop() == 0
    agent.start()  # acknowledged: the broker has nothing to send again
    publish_raw(mosquitto.url, [("json/a", b'{"v": 3}')])
    wait_until(lambda: influxdb.count("plants", "j", "v") == 2, 20, "the next reading", agent)
    assert len(dead_letters(agent)) == 2
    assert agent.stop() == 0


def test_a_payload_over_the_limit_is_set_aside_unparsed_with_a_sample(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    agent = make_agent(mosquitto.url, cloud(influxdb), mqtt_extra='max_payload = "64KiB"')
    agent.start()
    big = b"1" * (1 << 20)  # would be a 1 MiB string field, parsed on the event loop
    huge = b"2" * (4 << 20)  # over 16 x max_payload: MQTT 5 tells the broker not to send it
    publish_raw(
        mosquitto.url,
        [
            ("plant/l1/sensor/s1/temperature", big),
            ("plant/l1/sensor/s1/temperature", huge),
            ("plant/l1/sensor/s1/temperature", b"21.5"),
        ],
    )
    wait_until(lambda: influxdb.count("plants", "temperature") == 1, 20, "the reading", agent)
    [record] = dead_letters(agent)
    assert record["reason"] == "too_large"
    assert record["payload_size"] == 1 << 20 and len(record["payload"]) == 1024
    assert agent.proc is not None and agent.proc.poll() is None
    assert agent.stop() == 0


def test_a_far_future_stamp_is_refused_and_never_freezes_its_series(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    """One reading stamped 2100 used to move its series' clock there for good (checkpointed):
    every later reading of the series was too late for the aggregates."""
    influxdb.create_database("plants")
    influxdb.create_database("agg")
    outputs = output_toml("cloud", influxdb.url, "v1", flush_interval="0.1s") + output_toml(
        "agg", influxdb.url, "v1", database="agg", streams=["aggregates"], flush_interval="0.1s"
    )
    aggregation = '[[aggregations]]\nmeasurements = ["j"]\nevery = "1s"\nlateness = "0s"\n'
    agent = make_agent(mosquitto.url, outputs, extra=JSON_SUB + aggregation)
    agent.start()
    t0 = (time.time_ns() // 10**9 - 30) * 10**9
    messages = [("json/a", json.dumps({"v": 0, "time": t0}).encode())]
    messages.append(("json/a", json.dumps({"v": -1, "time": 4_102_444_800_000_000_000}).encode()))
    messages += [
        ("json/a", json.dumps({"v": i, "time": t0 + i * 10**9}).encode()) for i in range(1, 6)
    ]
    publish_raw(mosquitto.url, messages)
    wait_until(lambda: influxdb.count("agg", "j", "v_count") >= 5, 20, "5 windows", agent)
    assert agent.metric("edge_aggregate_readings_too_late_total") == 0
    [record] = dead_letters(agent)
    assert record["reason"] == "future_timestamp"
    assert influxdb.count("plants", "j", "v") == 6
    assert agent.stop() == 0


@pytest.mark.parametrize(("override", "plant"), [(False, "p001"), (True, "p999")])
def test_a_payload_cannot_relabel_the_plant_unless_the_config_allows_it(
    mosquitto: Mosquitto,
    influxdb: InfluxDB1,
    make_agent: AgentFactory,
    override: bool,
    plant: str,
) -> None:
    sub = INFLUX_SUB + f"override_tags = {str(override).lower()}\n"
    agent = make_agent(mosquitto.url, cloud(influxdb), extra=sub)
    agent.start()
    publish_raw(mosquitto.url, [("lp/s1", b"m,plant=p999 v=1")])
    wait_until(lambda: influxdb.count("plants", "m", "v") == 1, 20, "the reading", agent)
    [row] = influxdb.rows("plants", "m")
    assert (row["plant"], row["sensor"]) == (plant, "s1")
    assert agent.stop() == 0


def test_sigterm_while_intake_is_blocked_exits_within_the_grace(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    agent = make_agent(
        mosquitto.url,
        cloud(influxdb, retry_max_backoff="0.5s"),
        extra='[spool]\nmax_size = "16KiB"\nwhen_full = "block"\n',
    )
    agent.start()
    influxdb.kill()
    publish(mosquitto.url, 2_000, 2_000.0, threading.Event(), "publisher")
    wait_until(lambda: agent.metric("edge_intake_blocked") == 1, 20, "blocking", agent)
    began = time.monotonic()
    assert agent.stop(timeout=20) == 0
    assert time.monotonic() - began < 5 + 3  # shutdown_grace 5 s, plus the exit itself


def test_dead_letters_that_cannot_be_written_pause_intake_and_lose_nothing(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    """A dead-letter write that fails (disk full, read-only) used to crash the source. Now it is
    a disk failure like any other: intake pauses with nothing acknowledged, and resumes."""
    agent = make_agent(mosquitto.url, cloud(influxdb))
    blocker = agent.workdir / "data" / "dead-letters"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the dead-letter directory should be")
    agent.start()
    good = [(f"plant/l1/sensor/s{i}/temperature", str(i).encode()) for i in range(50)]
    publish_raw(mosquitto.url, [*good[:25], ("plant/l1/sensor/s1/temperature", b""), *good[25:]])
    wait_until(lambda: agent.metric("edge_intake_blocked") == 1, 20, "blocking", agent)
    assert agent.metric("edge_dead_letter_write_errors_total") >= 1
    assert agent.proc is not None and agent.proc.poll() is None
    blocker.unlink()  # space again
    wait_until(lambda: influxdb.count("plants", "temperature") == 50, 30, "every reading", agent)
    assert sorted(int(v) for _, v in influx_values(influxdb)) == list(range(50))
    assert [d["reason"] for d in dead_letters(agent)] == ["empty"]
    assert agent.metric("edge_intake_blocked") == 0
    assert agent.stop() == 0
