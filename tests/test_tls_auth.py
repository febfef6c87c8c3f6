"""The MQTT source over TLS with a client certificate and a password, against a real mosquitto
(certificates made here with openssl, for 127.0.0.1)."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from agentproc import output_toml
from conftest import AgentFactory
from paho.mqtt.enums import CallbackAPIVersion
from pki import make_pki

from agent.tools.localservers import InfluxDB1, Mosquitto

pytestmark = pytest.mark.e2e


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    pki = tmp_path / "pki"
    make_pki(pki)
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "edge", "s3cret"], check=True)
    broker = Mosquitto(
        tmp_path / "mosquitto",
        security=(
            f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\n"
            f"keyfile {pki / 'server.key'}\nrequire_certificate true\n"
            f"allow_anonymous false\npassword_file {passwd}"
        ),
    )
    broker.start()
    yield broker, pki
    broker.stop()


def tls_publisher(port: int, pki: Path) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="tls-pub")
    client.tls_set(
        str(pki / "ca.pem"),
        str(pki / "client.pem"),
        str(pki / "client.key"),
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    client.username_pw_set("edge", "s3cret")
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_tls_client_certificate_and_password(
    tmp_path: Path,
    tls_broker: tuple[Mosquitto, Path],
    influxdb: InfluxDB1,
    make_agent: AgentFactory,
) -> None:
    broker, pki = tls_broker
    influxdb.create_database("plants")
    (tmp_path / "mqtt.password").write_text("s3cret\n")
    agent = make_agent(
        f"mqtts://127.0.0.1:{broker.port}",
        output_toml("cloud", influxdb.url, "v1", flush_interval="0.1s"),
        mqtt_extra=(
            f'username = "edge"\npassword_file = "{tmp_path / "mqtt.password"}"\n'
            f'[mqtt.tls]\nca_file = "{pki / "ca.pem"}"\ncert_file = "{pki / "client.pem"}"\n'
            f'key_file = "{pki / "client.key"}"'
        ),
    )
    agent.start()
    pub = tls_publisher(broker.port, pki)
    for i in range(100):
        pub.publish(f"plant/line-1/sensor/s{i % 5}/temperature", str(i), qos=1).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()
    deadline = time.monotonic() + 30
    while influxdb.count("plants", "temperature") < 100 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert influxdb.count("plants", "temperature") == 100
    assert agent.stop() == 0


def test_wrong_password_is_reported_not_fatal(
    tls_broker: tuple[Mosquitto, Path], make_agent: AgentFactory
) -> None:
    broker, pki = tls_broker
    agent = make_agent(
        f"mqtts://127.0.0.1:{broker.port}",
        output_toml("cloud", "http://127.0.0.1:9", "v1"),
        mqtt_extra=(
            'username = "edge"\npassword = "Zq9-bad-secret"\n'
            f'[mqtt.tls]\nca_file = "{pki / "ca.pem"}"\n'
            f'cert_file = "{pki / "client.pem"}"\nkey_file = "{pki / "client.key"}"'
        ),
    )
    agent.start(wait_connected=False)
    time.sleep(2)
    url = f"http://127.0.0.1:{agent.status_port}/readyz"
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(url, timeout=5)
    assert answer.value.code == 503
    assert "mqtt" in json.loads(answer.value.read())["problems"]
    assert "mqtt_disconnected" in agent.log_tail()
    assert "Zq9-bad-secret" not in agent.log_path.read_text()  # secrets never reach the log
    assert agent.stop() == 0
