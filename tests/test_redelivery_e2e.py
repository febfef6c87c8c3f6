"""A crash loop against the redelivery guard: real mosquitto and InfluxDB, the agent SIGKILLed
twice while the broker never processes its PUBACKs (tests/mqtt_proxy.py swallows them).

A message that is committed, redelivered, acknowledged again and then crashed on once more
must still be stored exactly once: each reading's value is unique, so InfluxDB's count is exact.
"""

from __future__ import annotations

import pytest
from agentproc import AgentProcess, output_toml
from conftest import AgentFactory
from mqtt_proxy import PUBACK, MqttProxy
from test_e2e import wait_until

from agent.tools.localservers import InfluxDB1, Mosquitto
from agent.tools.simulate import Publisher

pytestmark = pytest.mark.e2e

TOPIC = "plant/line-1/sensor/s01/temperature"
M, N, Z = 101.0, 202.0, 303.0  # first reading, new reading, sentinel


def publish(url: str, value: float) -> None:
    pub = Publisher(url, f"pub-{value}", qos=1)
    pub.publish(TOPIC, str(value))
    assert pub.wait_acked(1, timeout=10)
    pub.close()


def values(influx: InfluxDB1) -> list[float]:
    return [row["value"] for row in influx.rows("plants", "temperature")]


COMMITTED = "edge_readings_committed_total"
DEDUPLICATED = "edge_mqtt_redeliveries_deduplicated_total"


def handled(agent: AgentProcess) -> float:
    """Messages this agent process has either stored or recognised as redeliveries."""
    return agent.metric(COMMITTED) + agent.metric(DEDUPLICATED)


def test_a_redelivery_acknowledged_again_survives_a_second_crash(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    influxdb.create_database("plants")
    proxy = MqttProxy(mosquitto.port)
    proxy.start()
    try:
        agent = make_agent(
            proxy.url,
            # One request at a time: the sentinel in InfluxDB means all before it is there too.
            output_toml("cloud", influxdb.url, "v1", flush_interval="0.1s", max_in_flight=1),
        )
        proxy.swallow = True

        # Connection 1: M is committed, its PUBACK never reaches the broker; crash.
        agent.start()
        publish(mosquitto.url, M)
        wait_until(lambda: proxy.swallowed[PUBACK] >= 1, 20, "M's PUBACK", agent)
        assert agent.metric(COMMITTED) == 1
        agent.kill()

        # Connection 2: M comes back (DUP) and is recognised, then a new N is committed, which
        # ends the redelivery phase; no PUBACK reaches the broker; crash.
        agent.start()
        wait_until(lambda: agent.metric(DEDUPLICATED) >= 1, 20, "M redelivered", agent)
        wait_until(lambda: proxy.swallowed[PUBACK] >= 2, 20, "M's second PUBACK", agent)
        publish(mosquitto.url, N)
        wait_until(lambda: proxy.swallowed[PUBACK] >= 3, 20, "N's PUBACK", agent)
        assert agent.metric(COMMITTED) == 1
        agent.kill()

        # Connection 3: the broker sends M and N again, and this time it hears the PUBACKs.
        proxy.swallow = False
        agent.start()
        wait_until(lambda: handled(agent) >= 2, 20, "M and N redelivered", agent)
        publish(mosquitto.url, Z)
        wait_until(lambda: Z in values(influxdb), 20, "the sentinel in InfluxDB", agent)
        dedup, committed = agent.metric(DEDUPLICATED), agent.metric(COMMITTED)
        assert agent.stop() == 0
    finally:
        proxy.stop()
    assert sorted(values(influxdb)) == [M, N, Z]
    assert (dedup, committed) == (2, 1)
