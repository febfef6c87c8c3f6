"""The plant as it is: a steady stream of good readings while a hostile publisher sends a
catalogue of garbage, the agent is SIGKILLed three times and the server is stopped twice. Real
mosquitto and InfluxDB, the agent as a subprocess.

Every good reading must arrive exactly once, every bad message must be in the dead letters with
its reason (a crash between writing a dead letter and the commit may write it twice; it is never
missing), and the agent must never exit on its own. Topics with control characters or bytes that
are not UTF-8 never reach the agent: mosquitto refuses them as malformed packets (the unit and
property tests cover them)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from agentproc import AgentProcess, output_toml
from conftest import AgentFactory
from test_e2e import influx_values, publish, run_schedule, wait_until

from agent.tools.localservers import InfluxDB1, Mosquitto
from agent.tools.simulate import Publisher

pytestmark = pytest.mark.e2e

N = 9_000
RATE = 300.0  # the good stream: 30 s of a steady plant
SUBSCRIPTIONS = """
[[mqtt.subscriptions]]
topic = "json/{sensor}"
format = "json"
measurement = "j"
[[mqtt.subscriptions]]
topic = "lp/{sensor}"
format = "influx"
"""
YEAR_2100_S = 4_102_444_800

# (topic, payload, expected) with {k} the message's unique id; expected is the dead letter's
# reason, or "good" for tricky messages that are valid and must arrive.
Entry = tuple[str, bytes, str]
CATALOGUE: list[Entry] = [
    ("json/bad{k}", b'{"v": 1, "s": "\\ud800"}', "unrepresentable"),
    ("json/bad{k}", b'{"\\udfff": 1}', "unrepresentable"),
    ("json/bad{k}", b'{"a":' * 5000 + b"1" + b"}" * 5000, "bad_json"),
    ("json/bad{k}", b'{"v": NaN}', "bad_json"),
    ("json/bad{k}", b'{"v": -Infinity}', "bad_json"),
    ("json/bad{k}", b'{"a\\nb": 1}', "unrepresentable"),
    ("json/bad{k}", b'{"a\\u0000b": 1}', "unrepresentable"),
    ("json/bad{k}", b'{"a\\tb": 1}', "unrepresentable"),
    ("json/bad{k}", b'{"v": 1, "time": %d}' % YEAR_2100_S, "future_timestamp"),
    ("json/bad{k}", b'{"v": 1, "time": 1e30}', "bad_timestamp"),
    ("json/bad{k}", b'{"v": 1, "time": "1900-01-01T00:00:00Z"}', "ancient_timestamp"),
    ("plant/hostile/sensor/bad{k}/temperature", b"\xff\xfe\xfd", "not_utf8"),
    ("plant/hostile/sensor/bad{k}/temperature", b"9" * 70_000, "too_large"),
    ("plant/hostile/sensor/bad{k}/temperature", b"", "empty"),
    ("lp/bad{k}", b"m v=", "bad_line_protocol"),
    ("lp/bad{k}", b"m v=1\nm,x=\n", "bad_line_protocol"),
    # Valid, if odd: separators are escaped, never injected; a payload's plant tag loses.
    ("json/bad{k}", b'{"a b,c=d": 1}', "good"),
    ("plant/hostile/sensor/bad{k} a,b=c x/sep", b"1", "good"),
    ("lp/bad{k}", b"spoof,plant=evil v=1", "good"),
]
ID = re.compile(r"bad(\d+)")


def hostile(url: str, stop: threading.Event, sent: dict[int, Entry]) -> None:
    pub = Publisher(url, "hostile", qos=1)
    k = 0
    while not stop.is_set():
        for topic, payload, expected in CATALOGUE:
            pub.client.publish(topic.format(k=k), payload, qos=1)
            pub.sent += 1
            sent[k] = (topic, payload, expected)
            k += 1
        time.sleep(0.5)
    assert pub.wait_acked(k, timeout=60), f"broker acknowledged {pub.acked} of {k}"
    pub.close()


def dead_ids(agent: AgentProcess) -> dict[int, set[str]]:
    """Message id -> the reasons its dead letters give (topic, or the line's sensor tag for a
    reading that was held for the clock)."""
    path = agent.workdir / "data" / "dead-letters" / "ingest.jsonl"
    out: dict[int, set[str]] = {}
    if not path.exists():
        return out
    for text in path.read_text().splitlines():
        record = json.loads(text)
        found = ID.search(record.get("topic") or record.get("line", ""))
        assert found, f"dead letter without an id: {record}"
        out.setdefault(int(found.group(1)), set()).add(record["reason"])
    return out


def still_running(agent: AgentProcess) -> Callable[[], None]:
    def check() -> None:
        assert agent.proc is not None and agent.proc.poll() is None, agent.log_tail()

    return check


def test_hostile_publisher_kills_and_outages_lose_nothing_and_set_aside_every_bad_one(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    influxdb.create_database("plants")
    agent = make_agent(
        mosquitto.url,
        output_toml("cloud", influxdb.url, "v1", flush_interval="0.1s", retry_max_backoff="1s"),
        extra=SUBSCRIPTIONS,
        mqtt_extra='max_payload = "64KiB"',
    )
    agent.start()
    sent: dict[int, Entry] = {}
    stop = threading.Event()
    bad = threading.Thread(target=hostile, args=(mosquitto.url, stop, sent), daemon=True)
    done = threading.Event()
    good = threading.Thread(
        target=publish, args=(mosquitto.url, N, RATE, done, "good-publisher"), daemon=True
    )
    bad.start()
    good.start()
    alive = still_running(agent)
    run_schedule(
        [
            (4.0, alive),
            (5.0, agent.kill),
            (5.5, agent.start),
            (8.0, influxdb.stop),
            (12.0, influxdb.start),
            (13.0, alive),
            (14.0, agent.kill),
            (15.0, agent.start),
            (20.0, influxdb.stop),
            (24.0, influxdb.start),
            (25.0, alive),
            (26.0, agent.kill),
            (26.3, agent.start),
        ]
    )
    good.join(timeout=120)
    assert done.is_set()
    stop.set()
    bad.join(timeout=120)
    expected_dead = {k: e[2] for k, e in sent.items() if e[2] != "good"}
    wait_until(lambda: influxdb.count("plants", "temperature") >= N, 90, "every reading", agent)
    wait_until(lambda: expected_dead.keys() <= dead_ids(agent).keys(), 60, "dead letters", agent)
    alive()

    values = sorted(int(v) for _, v in influx_values(influxdb))
    assert values == list(range(N)), "a good reading is missing or stored twice"
    reasons = dead_ids(agent)
    wrong = {k: (reasons[k], why) for k, why in expected_dead.items() if reasons[k] != {why}}
    assert not wrong, f"dead letters with the wrong reason: {list(wrong.items())[:5]}"
    goods = Counter(e[1] for k, e in sent.items() if e[2] == "good")
    assert not reasons.keys() - expected_dead.keys(), "a valid message was set aside"
    assert influxdb.count("plants", "j", "a b,c=d") == goods[b'{"a b,c=d": 1}']
    assert influxdb.count("plants", "sep") == goods[b"1"]
    spoofs = influxdb.rows("plants", "spoof")
    assert len(spoofs) == goods[b"spoof,plant=evil v=1"]
    assert {row["plant"] for row in spoofs} == {"p001"}
    log = (agent.workdir / "agent.log").read_text()
    assert "stage_crashed" not in log
    summary: dict[str, Any] = Counter(expected_dead.values())
    assert agent.stop() == 0, summary
