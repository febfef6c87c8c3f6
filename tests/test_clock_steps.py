"""Clock steps on the real thing: the agent runs under libfaketime, whose wall clock the test
moves at run time through a timestamp file, while mosquitto, InfluxDB and the test keep the true
time. The boot clock is left alone (FAKETIME_DONT_FAKE_MONOTONIC), as on a Raspberry Pi whose
wall clock NTP steps. Every reading must land at its true time, none lost, none twice.

This machine's kernel reports its clock unsynchronised (no NTP client), so what confirms the wall
clock here is InfluxDB's Date header, as on a gateway whose NTP has not answered yet.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from agentproc import AgentProcess, output_toml
from conftest import AgentFactory
from test_e2e import wait_until

from agent.tools.localservers import InfluxDB1, Mosquitto
from agent.tools.simulate import Publisher

pytestmark = pytest.mark.e2e

SENSORS = 5


class FakeClock:
    """The agent's wall clock, as an offset from the true time that the test can change."""

    def __init__(self, path: Path, library: str) -> None:
        self.path = path
        self.set("+0")
        self.env = {
            "LD_PRELOAD": library,
            "FAKETIME_TIMESTAMP_FILE": str(path),
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def set(self, offset: str) -> None:
        self.path.write_text(offset + "\n")


def publish_batch(url: str, first: int, n: int, log: list[tuple[int, int, int]]) -> None:
    """Readings first..first+n-1 as values; ``log`` gets (value, sent, acked) in true time."""
    pub = Publisher(url, f"pub-{first}", qos=1)
    for seq in range(first, first + n):
        sent = time.time_ns()
        pub.publish(f"plant/l1/sensor/s{seq % SENSORS}/temperature", str(seq))
        assert pub.wait_acked(seq - first + 1, timeout=10)
        log.append((seq, sent, time.time_ns()))
        time.sleep(0.02)
    pub.close()


def assert_true_times(influx: InfluxDB1, log: list[tuple[int, int, int]]) -> None:
    """Every reading once, stamped between its publication and a moment after the broker
    acknowledged it (the agent stamps at commit: well within a second)."""
    rows = influx.rows("plants", "temperature")
    stamps = {int(row["value"]): int(row["time"]) for row in rows}
    assert len(rows) == len(stamps) == len(log), f"{len(rows)} points for {len(log)} readings"
    for seq, sent, acked in log:
        assert sent - 10**9 <= stamps[seq] <= acked + 10**9, (
            f"reading {seq} stamped {(stamps[seq] - sent) / 1e9:+.3f} s from its publication"
        )


def make(make_agent: AgentFactory, mosquitto: Mosquitto, influxdb: InfluxDB1) -> AgentProcess:
    influxdb.create_database("plants")
    return make_agent(
        mosquitto.url,
        output_toml("cloud", influxdb.url, "v1", flush_interval="0.1s"),
        extra='[spool]\nmax_age = "1h"\n',
    )


def test_a_gateway_booting_in_1970_holds_its_readings_and_places_them_when_the_clock_is_set(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB1,
    make_agent: AgentFactory,
    libfaketime: str,
) -> None:
    """Before, they were stamped at the spool's newest timestamp + n ns (or in 1970), and the
    step to today aged every chunk 56 years: dropped as max_age."""
    clock = FakeClock(tmp_path / "faketime", libfaketime)
    clock.set("-20500d")  # early 1971
    agent = make(make_agent, mosquitto, influxdb)
    agent.env = clock.env
    agent.start()
    log: list[tuple[int, int, int]] = []
    publish_batch(mosquitto.url, 0, 40, log)
    wait_until(lambda: agent.metric('edge_spool_lines{stream="held"}') == 40, 20, "held", agent)
    assert agent.metric("edge_clock_trusted") == 0
    agent.kill()  # held readings are committed like any others
    agent.start()
    publish_batch(mosquitto.url, 40, 40, log)
    wait_until(lambda: agent.metric('edge_spool_lines{stream="held"}') == 80, 20, "held", agent)
    assert influxdb.count("plants", "temperature") == 0
    clock.set("+0")  # NTP steps the clock to today
    wait_until(lambda: influxdb.count("plants", "temperature") == 80, 30, "all placed", agent)
    publish_batch(mosquitto.url, 80, 20, log)
    wait_until(lambda: influxdb.count("plants", "temperature") == 100, 20, "the rest", agent)
    assert_true_times(influxdb, log)
    assert agent.metric("edge_clock_held_placed_total") == 80
    assert agent.metric("edge_readings_dropped_total") == 0
    assert agent.stop() == 0


def test_a_clock_stepped_back_and_forth_without_ntp_never_misstamps(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB1,
    make_agent: AgentFactory,
    libfaketime: str,
) -> None:
    clock = FakeClock(tmp_path / "faketime", libfaketime)
    agent = make(make_agent, mosquitto, influxdb)
    agent.env = clock.env
    agent.start()
    wait_until(lambda: agent.metric("edge_clock_trusted") == 1, 20, "a confirmed clock", agent)
    log: list[tuple[int, int, int]] = []
    publish_batch(mosquitto.url, 0, 20, log)
    clock.set("-3600s")  # someone sets the clock an hour back
    time.sleep(2.5)  # the fake clock's file is read once a second
    done = threading.Event()
    worker = threading.Thread(
        target=lambda: (publish_batch(mosquitto.url, 20, 40, log), done.set()), daemon=True
    )
    worker.start()
    wait_until(lambda: agent.metric("edge_clock_trusted") == 0, 20, "distrust", agent)
    clock.set("+0")  # and back: confirmed again by the server's clock
    worker.join(timeout=30)
    assert done.is_set()
    wait_until(lambda: influxdb.count("plants", "temperature") == 60, 30, "every reading", agent)
    assert_true_times(influxdb, log)
    assert agent.metric('edge_clock_steps_total{action="distrusted"}') >= 1
    assert agent.stop() == 0
