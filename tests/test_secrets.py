"""A distinctive secret planted in every place that holds one (MQTT password from a file, a v2
token in the TOML, a v1 password from the environment) and error paths that quote them: a
broker that refuses the login, servers that answer 401 and quote back the credentials they got.
None of them may show in the log, /readyz, /metrics or check-config."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from agentproc import AgentProcess, output_toml
from conftest import AgentFactory
from fault_server import FaultServer
from paho.mqtt.enums import CallbackAPIVersion

from agent.redact import MASK
from agent.tools.localservers import Mosquitto

pytestmark = pytest.mark.e2e

MQTT_SECRET = "Mq-planted-7c1f"
TOKEN_SECRET = "Tk-planted-9e4a"
V1_SECRET = "V1-planted-2b8d"
# What a v1 output puts on the wire: HTTP Basic credentials.
V1_BASIC = base64.b64encode(f"admin:{V1_SECRET}".encode()).decode()
PLANTED = (MQTT_SECRET, TOKEN_SECRET, V1_SECRET, V1_BASIC)


def passwd(path: Path, user: str, password: str) -> None:
    subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True)


@pytest.fixture
def guarded_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    """A broker that knows the agent's user with another password: it refuses the login."""
    users = tmp_path / "passwd"
    users.touch()
    passwd(users, "edge", "not-the-planted-one")
    passwd(users, "pub", "pub-pass")
    broker = Mosquitto(
        tmp_path / "mosquitto", security=f"allow_anonymous false\npassword_file {users}"
    )
    broker.start()
    yield broker, users
    broker.stop()


@pytest.fixture
def refusing_servers() -> Iterator[tuple[FaultServer, FaultServer]]:
    with (
        FaultServer(auth_token="the-right-token", echo_auth=True) as v2,
        FaultServer(auth_token="the-right-token", echo_auth=True) as v1,
    ):
        yield v2, v1


def wait_until(check: Callable[[], bool], what: str, agent: AgentProcess) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{agent.log_tail()}"
        time.sleep(0.2)


def publish_one(port: int) -> None:
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="publisher")
    pub.username_pw_set("pub", "pub-pass")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    pub.publish("plant/line-1/sensor/s1/temperature", "21.5", qos=1).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()


def check_config(agent: AgentProcess) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(agent.config)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout + done.stderr


def assert_nothing_planted(where: str, text: str) -> None:
    found = [secret for secret in PLANTED if secret in text]
    assert not found, f"{found} in {where}"


def test_planted_secrets_never_show(
    tmp_path: Path,
    guarded_broker: tuple[Mosquitto, Path],
    refusing_servers: tuple[FaultServer, FaultServer],
    make_agent: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker, users = guarded_broker
    v2, v1 = refusing_servers
    (tmp_path / "mqtt.password").write_text(MQTT_SECRET + "\n")
    monkeypatch.setenv("EDGE_OUTPUTS__LEGACY__PASSWORD", V1_SECRET)
    fast = {"flush_interval": "0.1s", "config_error_retry": "0.5s"}
    outputs = output_toml("cloud", v2.url, "v2", token=TOKEN_SECRET, **fast) + output_toml(
        "legacy", v1.url, "v1", username="admin", **fast
    )
    agent = make_agent(
        broker.url,
        outputs,
        mqtt_extra=f'username = "edge"\npassword_file = "{tmp_path / "mqtt.password"}"',
    )
    agent.start(wait_connected=False)
    wait_until(lambda: "mqtt_disconnected" in agent.log_tail(), "the refused login", agent)
    refused = agent.readyz()

    passwd(users, "edge", MQTT_SECRET)
    broker.restart()
    wait_until(lambda: agent.metric("edge_mqtt_connected") == 1, "the login", agent)
    publish_one(broker.port)
    wait_until(
        lambda: all(
            agent.metric(f'edge_output_requests_total{{outcome="401",output="{name}"}}') >= 2
            for name in ("cloud", "legacy")
        ),
        "401s from both servers",
        agent,
    )
    status, body = agent.readyz()
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.status_port}/metrics") as resp:
        metrics = resp.read().decode()
    shown = check_config(agent)
    assert agent.stop() == 0
    log = agent.log_path.read_text()

    assert refused[0] == 503 and "mqtt" in refused[1]["problems"]
    assert status == 503 and {"output:cloud", "output:legacy"} <= body["problems"].keys()
    # The servers did quote the credentials, and the log has them masked.
    server_said = " ".join(json.loads(line).get("server_said", "") for line in log.splitlines())
    assert f"'Token {MASK}'" in server_said and f"'Basic {MASK}'" in server_said
    assert shown.count(MASK) == 3  # the MQTT password, the token, the v1 password
    for where, text in (
        ("the log", log),
        ("/readyz", json.dumps(refused) + json.dumps(body)),
        ("/metrics", metrics),
        ("check-config", shown),
    ):
        assert_nothing_planted(where, text)


@pytest.mark.parametrize("key", ["mqtt", "output"])
def test_credentials_in_a_url_stop_the_agent_unshown(
    tmp_path: Path, make_agent: AgentFactory, key: str
) -> None:
    mqtt_url = "mqtt://127.0.0.1:9"
    output_url = "http://127.0.0.1:9"
    if key == "mqtt":
        mqtt_url = f"mqtt://edge:{MQTT_SECRET}@127.0.0.1:9"
    else:
        output_url = f"http://admin:{V1_SECRET}@127.0.0.1:9"
    agent = make_agent(mqtt_url, output_toml("cloud", output_url, "v1"))
    with pytest.raises(RuntimeError, match="agent exited with 2"):
        agent.start()
    log = agent.log_path.read_text()
    assert "carries credentials" in log
    assert_nothing_planted("the error", log)
