"""An output over verified HTTPS: a real InfluxDB 1.x serving a certificate of a test CA, real
mosquitto, the agent as a subprocess. Trusted through tls_ca_file, every reading arrives; not
trusted, the output says so (/readyz, the log, edge_output_healthy) and keeps every reading
until the trust is fixed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agentproc import AgentProcess, output_toml
from conftest import AgentFactory
from pki import make_pki

from agent.tools.localservers import InfluxDB1, Mosquitto, TLSFiles
from agent.tools.simulate import Publisher

pytestmark = pytest.mark.e2e

N = 500


@pytest.fixture
def pki(tmp_path: Path) -> TLSFiles:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def https_influxdb(tmp_path: Path, pki: TLSFiles) -> Iterator[InfluxDB1]:
    with InfluxDB1(tmp_path / "influxdb", tls=pki) as server:
        server.create_database("plants")
        yield server


def publish(url: str, n: int) -> None:
    pub = Publisher(url, "publisher", qos=1)
    for seq in range(n):
        pub.publish(f"plant/line-1/sensor/s{seq % 10}/temperature", str(seq))
    assert pub.wait_acked(n, timeout=30), f"broker acknowledged only {pub.acked} of {n}"
    pub.close()


def wait_until(check: Callable[[], bool], what: str, agent: AgentProcess) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{agent.log_tail()}"
        time.sleep(0.2)


def https_output(influx: InfluxDB1, **tls: object) -> str:
    return output_toml(
        "cloud", influx.url, "v1", flush_interval="0.1s", config_error_retry="1s", **tls
    )


def assert_each_reading_once(influx: InfluxDB1) -> None:
    values = sorted(int(row["value"]) for row in influx.rows("plants", "temperature"))
    assert values == list(range(N))


def test_readings_arrive_over_https_trusted_through_tls_ca_file(
    mosquitto: Mosquitto, https_influxdb: InfluxDB1, pki: TLSFiles, make_agent: AgentFactory
) -> None:
    agent = make_agent(mosquitto.url, https_output(https_influxdb, tls_ca_file=str(pki.ca)))
    agent.start()
    publish(mosquitto.url, N)
    wait_until(lambda: https_influxdb.count("plants", "temperature") >= N, "all readings", agent)
    assert_each_reading_once(https_influxdb)
    assert agent.metrics()['edge_output_healthy{output="cloud"}'] == 1
    assert agent.stop() == 0


@pytest.mark.parametrize("clock", ["system", "verify"])
def test_untrusted_certificate_is_reported_and_nothing_is_lost(
    mosquitto: Mosquitto,
    https_influxdb: InfluxDB1,
    pki: TLSFiles,
    make_agent: AgentFactory,
    clock: str,
) -> None:
    """With clock.trust = system the writes meet the certificate. With verify and no NTP, the
    readings are held until a server's Date confirms the clock, so the clock's probe of the same
    server meets it first. Either way the output reports it."""
    trust = f'[clock]\ntrust = "{clock}"'
    agent = make_agent(mosquitto.url, https_output(https_influxdb), extra=trust)
    agent.start()
    publish(mosquitto.url, N)
    wait_until(
        lambda: (
            agent.metric("edge_readings_committed_total") == N
            and "output:cloud" in agent.readyz()[1]["problems"]
        ),
        "every reading in the spool and the output unhealthy",
        agent,
    )
    if clock == "system":
        assert agent.metric('edge_output_requests_total{outcome="tls_error",output="cloud"}') >= 1
    status, body = agent.readyz()
    problem = body["problems"]["output:cloud"]
    assert status == 503
    assert "not trusted" in problem and "set tls_ca_file" in problem, problem
    assert agent.metrics()['edge_output_healthy{output="cloud"}'] == 0
    events = [json.loads(line) for line in agent.log_path.read_text().splitlines()]
    assert [e["problem"] for e in events if e["event"] == "output_config_error"] == [problem]
    assert https_influxdb.count("plants", "temperature") == 0
    assert agent.stop() == 0

    fixed = make_agent(
        mosquitto.url, https_output(https_influxdb, tls_ca_file=str(pki.ca)), extra=trust
    )
    fixed.start()
    wait_until(lambda: https_influxdb.count("plants", "temperature") >= N, "the backlog", fixed)
    assert_each_reading_once(https_influxdb)
    assert fixed.readyz() == (200, {"ready": True, "problems": {}})
    assert fixed.stop() == 0


def test_plain_http_to_the_https_port_sets_nothing_aside(
    mosquitto: Mosquitto, https_influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    """``http://`` for an https server: InfluxDB answers every request 400 ("Client sent an HTTP
    request to an HTTPS server"), which must pause the output, not dead-letter every line."""
    plain = https_influxdb.url.replace("https://", "http://")
    agent = make_agent(
        mosquitto.url,
        output_toml("cloud", plain, "v1", flush_interval="0.1s", batch_size=8),
        extra='[clock]\ntrust = "system"',  # the 400 has no Date to confirm the clock with
    )
    agent.start()
    publish(mosquitto.url, 20)
    wait_until(lambda: agent.readyz()[0] == 503, "the output paused", agent)
    problem = agent.readyz()[1]["problems"]["output:cloud"]
    assert problem.startswith("HTTP 400 from http") and "HTTPS server" in problem, problem
    assert agent.metric("edge_output_dead_letters_total") == 0
    assert agent.stop() == 0
