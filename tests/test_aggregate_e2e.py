"""Aggregation end to end: real mosquitto and InfluxDB, the agent SIGKILLed while it aggregates.

Readings carry their own (historical) timestamps, arrive out of order, and some arrive too late;
the aggregates InfluxDB ends up with must equal a reference computed from the published readings
with ``statistics``, field by field, bit for bit.
"""

from __future__ import annotations

import math
import random
import statistics
import threading
import time
from collections import defaultdict
from time import time_ns as now_ns

import pytest
from agentproc import output_toml
from conftest import AgentFactory
from recording_proxy import RecordingProxy
from test_e2e import publish as publish_values
from test_e2e import run_schedule, wait_until

from agent.tools.localservers import InfluxDB1, Mosquitto
from agent.tools.simulate import Publisher

pytestmark = pytest.mark.e2e

SENSORS = 6
PER_SENSOR = 600
STEP_MS = 2000  # each sensor reads every 2 s of event time: 20 minutes in all
JITTER = 4  # readings are shuffled within blocks of this many: up to 8 s out of order
MIN_MS = 60_000
FUNCTIONS = ["mean", "min", "max", "count", "sum", "first", "last", "stddev"]
AGGREGATION = f"""
[[mqtt.subscriptions]]
topic = "hist/{{sensor}}"
format = "influx"
precision = "ms"
[[aggregations]]
measurements = ["temp"]
every = "1m"
lateness = "5s"
functions = {FUNCTIONS!r}
"""
Reading = tuple[str, int, float]


def make_readings(t0: int) -> list[Reading]:
    """Per sensor, in time order but shuffled within small blocks; sensors interleaved."""
    rnd = random.Random(7)
    per_sensor = []
    for s in range(SENSORS):
        points = [
            (
                f"s{s}",
                t0 + i * STEP_MS + s * 100,
                round(rnd.uniform(-40.0, 120.0), rnd.randint(0, 9)),
            )
            for i in range(PER_SENSOR)
        ]
        for b in range(0, len(points), JITTER):
            block = points[b : b + JITTER]
            rnd.shuffle(block)
            points[b : b + JITTER] = block
        per_sensor.append(points)
    return [p for group in zip(*per_sensor, strict=True) for p in group]


def reference(readings: list[Reading]) -> dict[tuple[str, int], dict[str, float | int]]:
    groups: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    for sensor, ts, value in readings:
        stop_ns = (ts // MIN_MS + 1) * MIN_MS * 1_000_000
        groups[(sensor, stop_ns)].append((ts, value))
    out = {}
    for key, points in groups.items():
        values = [v for _, v in points]
        ordered = sorted(points)
        out[key] = {
            "value_mean": statistics.mean(values),
            "value_min": min(values),
            "value_max": max(values),
            "value_count": len(values),
            "value_sum": math.fsum(values),
            "value_first": ordered[0][1],
            "value_last": ordered[-1][1],
            "value_stddev": statistics.stdev(values),
        }
    return out


def publish(url: str, readings: list[Reading], rate: float, done: threading.Event) -> None:
    pub = Publisher(url, "hist-publisher", qos=1)
    start = time.monotonic()
    for n, (sensor, ts, value) in enumerate(readings):
        pub.publish(f"hist/{sensor}", f"temp value={value!r} {ts}")
        if n % 50 == 0:
            time.sleep(max(0.0, start + n / rate - time.monotonic()))
    assert pub.wait_acked(len(readings), timeout=60)
    pub.close()
    done.set()


def influx_aggregates(influx: InfluxDB1) -> dict[tuple[str, int], dict[str, float | int]]:
    return {
        (row["sensor"], row["time"]): {k: v for k, v in row.items() if k.startswith("value_")}
        for row in influx.rows("agg", "temp")
    }


def test_aggregates_survive_sigkills_and_equal_the_reference(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    influxdb.create_database("plants")
    influxdb.create_database("agg")
    fast = {"batch_size": 500, "flush_interval": "0.2s", "retry_max_backoff": "1s"}
    agent = make_agent(
        mosquitto.url,
        output_toml("raw", influxdb.url, "v1", streams=["raw"], **fast)
        + output_toml(
            "summaries", influxdb.url, "v1", database="agg", streams=["aggregates"], **fast
        ),
        extra=AGGREGATION,
    )
    t0 = (int(time.time() * 1000) - 3 * 3600_000) // MIN_MS * MIN_MS  # three hours ago
    readings = make_readings(t0)
    agent.start()
    done = threading.Event()
    publisher = threading.Thread(
        target=publish, args=(mosquitto.url, readings, 300.0, done), daemon=True
    )
    publisher.start()
    # Kills at random points of three stretches; the last one leaves the agent down for 2 s,
    # so the broker queues a backlog and redelivers it.
    rnd = random.Random()
    kills = [rnd.uniform(1.5, 3.5), rnd.uniform(4.5, 6.5), rnd.uniform(7.5, 9.0)]
    run_schedule(
        [
            (kills[0], agent.kill),
            (kills[0] + 0.3, agent.start),
            (kills[1], agent.kill),
            (kills[1] + 0.05, agent.start),
            (kills[2], agent.kill),
            (kills[2] + 2.0, agent.start),
        ]
    )
    publisher.join(timeout=90)
    assert done.is_set()
    # Ten minutes behind each sensor's clock: their windows are final.
    stragglers = [(f"s{s}", t0 + 10 * MIN_MS + s * 100 + 1, 1e6) for s in range(SENSORS)]
    straggled = threading.Event()
    publish(mosquitto.url, stragglers, 100.0, straggled)

    expected = reference(readings)
    wait_until(
        lambda: influx_aggregates(influxdb) == expected,
        90,
        f"aggregates equal to the reference (SIGKILLs at {[round(k, 2) for k in kills]} s)",
        agent,
    )
    got = influx_aggregates(influxdb)
    assert got == expected
    wait_until(
        lambda: influxdb.count("plants", "temp") == len(readings) + len(stragglers),
        30,
        "every raw reading, the too-late ones included",
        agent,
    )
    wait_until(
        lambda: agent.metric("edge_aggregate_readings_too_late_total") == len(stragglers),
        10,
        "too-late readings counted",
        agent,
    )
    assert agent.stop() == 0


def test_after_an_outage_aggregates_arrive_before_the_raw_backlog(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    """Readings flow while InfluxDB is down; once it is back, the first accepted write holds
    aggregates, every aggregate of the outage is in before the last raw line of its backlog,
    and nothing is lost."""
    influxdb.create_database("plants")
    proxy = RecordingProxy(influxdb.url)
    proxy.start()
    n = 6000
    agent = make_agent(
        mosquitto.url,
        output_toml(
            "cloud",
            proxy.url,
            "v1",
            streams=["raw", "aggregates"],
            batch_size=500,
            flush_interval="0.2s",
            retry_max_backoff="1s",
        ),
        extra="""
[[aggregations]]
every = "2s"
lateness = "1s"
functions = ["count"]
suffix = "_2s"
""",
    )
    try:
        agent.start()
        done = threading.Event()
        publisher = threading.Thread(
            target=publish_values, args=(mosquitto.url, n, 500.0, done, "publisher"), daemon=True
        )
        publisher.start()
        back: list[int] = []
        run_schedule(
            [(3.0, influxdb.stop), (11.0, influxdb.start), (11.0, lambda: back.append(now_ns()))]
        )
        publisher.join(timeout=60)
        assert done.is_set()

        def counts() -> int:
            rows = influxdb.rows("plants", "temperature_2s")
            return sum(int(row["value_count"]) for row in rows)

        wait_until(lambda: influxdb.count("plants", "temperature") == n, 60, "raw", agent)
        wait_until(lambda: counts() == n, 30, "aggregates counting every reading", agent)
        assert agent.stop() == 0
    finally:
        proxy.stop()

    accepted = proxy.accepted()
    failed = max(i for i, a in enumerate(proxy.answered) if a.status >= 300)
    after = [a.lines for a in proxy.answered[failed + 1 :] if a.status < 300]
    assert after[0] and all(line.startswith("temperature_2s,") for line in after[0])

    def last(prefix: str, slack: float) -> int:
        """Index of the last accepted write with a line of ``prefix`` stamped ``slack`` seconds
        or more before the server came back."""
        before = back[0] - int(slack * 1e9)
        return max(
            i
            for i, lines in enumerate(accepted)
            if any(
                line.startswith(prefix) and int(line.rsplit(" ", 1)[1]) < before for line in lines
            )
        )

    # The windows due while the server was down (stop + lateness, plus an aggregator cycle)
    # are all in before the last raw reading of the outage.
    assert last("temperature_2s,", 1.0 + 1.5) < last("temperature,", 0.0)
