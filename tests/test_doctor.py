"""``edge-agent doctor`` against real servers: mosquitto (with and without a password, its
session kept or lost), InfluxDB 1.x with authentication, VictoriaMetrics; the InfluxDB 2.x
answers (401 token, 404 bucket, 403 write) from the fault double, which plays them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentproc import output_toml
from conftest import AgentFactory
from fault_server import FaultServer

from agent.config import MQTTSection, OutputSection, StatusSection
from agent.forward.classify import Action, Outcome
from agent.forward.http import Ping
from agent.forward.probe import INFLUXDB, Listing, ServerLook
from agent.ops.doctor import Agent, broker_checks, output_checks
from agent.source.probe import BrokerAnswer
from agent.tools.localservers import InfluxDB1, Mosquitto, VictoriaMetrics, free_port
from agent.tools.simulate import Publisher

ADMIN = ("admin", "Adm1n-secret")
WRITER = ("writer", "Wr1ter-secret")
READER = ("reader", "Re4der-secret")
SUBSCRIPTION = '[[mqtt.subscriptions]]\ntopic = "plant/{line}/sensor/{sensor}/{measurement}"\n'


def doctor(config: Path) -> tuple[int, dict[str, str]]:
    """Exit code and each check's status by name (the JSON output)."""
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "agent", "doctor", "--config", str(config), "--json"],
        capture_output=True,
        timeout=60,
    )
    assert time.monotonic() - began < 20, "doctor is not time-bounded"
    result = json.loads(done.stdout)
    return done.returncode, {c["name"]: c["status"] for c in result.get("checks", [])}


def write_config(path: Path, mqtt_url: str, outputs: str, mqtt_extra: str = "") -> Path:
    path.write_text(
        f"""[agent]
name = "doc"
data_dir = "{path.parent / "data"}"
[mqtt]
url = "{mqtt_url}"
{mqtt_extra}
{SUBSCRIPTION}
{outputs}"""
    )
    return path


@pytest.fixture
def secured_influxdb(tmp_path: Path) -> Iterator[InfluxDB1]:
    server = InfluxDB1(tmp_path / "influxdb-auth", admin=ADMIN)
    server.start()
    try:
        server.create_database("plants")
        for (user, password), grant in ((WRITER, "WRITE"), (READER, "READ")):
            server.query("", f"CREATE USER \"{user}\" WITH PASSWORD '{password}'")
            server.query("", f'GRANT {grant} ON "plants" TO "{user}"')
        yield server
    finally:
        server.stop()


def v1(name: str, url: str, user: tuple[str, str], database: str = "plants") -> str:
    return output_toml(name, url, "v1", database=database, username=user[0], password=user[1])


@pytest.mark.e2e
def test_all_good_and_nothing_written(
    tmp_path: Path,
    mosquitto: Mosquitto,
    secured_influxdb: InfluxDB1,
    victoria: VictoriaMetrics,
) -> None:
    outputs = v1("influx", secured_influxdb.url, WRITER) + output_toml("vm", victoria.url, "v1")
    config = write_config(tmp_path / "agent.toml", mosquitto.url, outputs)
    code, checks = doctor(config)
    assert code == 0, checks
    assert checks == {
        "config valid": "ok",
        "mqtt reachable": "ok",
        "mqtt authenticated": "ok",
        "mqtt session present": "skip",  # the agent never ran with this data dir
        "output influx: reachable": "ok",
        "output influx: authenticated": "ok",
        "output influx: database exists": "ok",
        "output influx: write permitted": "ok",
        "output vm: reachable": "ok",
        "output vm: authenticated": "skip",
        "output vm: database exists": "skip",
        "output vm: write permitted": "ok",
    }
    measurements = secured_influxdb.query("plants", "SHOW MEASUREMENTS")
    assert "series" not in measurements["results"][0]
    assert victoria.samples('{__name__=~".+", db="plants"}') == 0


@pytest.mark.e2e
def test_influxdb_wrong_password_missing_database_no_write_grant(
    tmp_path: Path, mosquitto: Mosquitto, secured_influxdb: InfluxDB1
) -> None:
    url = secured_influxdb.url
    outputs = (
        v1("badpw", url, (WRITER[0], "not-the-password"))
        + v1("nodb", url, WRITER, database="missing")
        + v1("readonly", url, READER)
    )
    code, checks = doctor(write_config(tmp_path / "agent.toml", mosquitto.url, outputs))
    assert code == 1
    assert checks["output badpw: reachable"] == "ok"
    assert checks["output badpw: authenticated"] == "fail"
    assert checks["output badpw: write permitted"] == "skip"
    assert checks["output nodb: authenticated"] == "ok"
    assert checks["output nodb: database exists"] == "fail"
    assert checks["output readonly: database exists"] == "ok"
    assert checks["output readonly: write permitted"] == "fail"
    databases = secured_influxdb.query("", "SHOW DATABASES")["results"][0]["series"][0]
    assert databases["values"] == [["plants"]]


@pytest.mark.e2e
def test_influxdb2_answers_token_bucket_permission(tmp_path: Path, mosquitto: Mosquitto) -> None:
    with (
        FaultServer(v2_buckets=["plants"], auth_token="T0ken-good") as good,
        FaultServer(v2_buckets=["plants"], auth_token="T0ken-good", write_forbidden=True) as ro,
    ):
        outputs = (
            output_toml("ok", good.url, "v2", token="T0ken-good")
            + output_toml("badtoken", good.url, "v2", token="T0ken-bad")
            + output_toml("nobucket", good.url, "v2", token="T0ken-good", bucket="missing")
            + output_toml("readonly", ro.url, "v2", token="T0ken-good")
        )
        code, checks = doctor(write_config(tmp_path / "agent.toml", mosquitto.url, outputs))
        assert not any(r.lines for r in good.requests + ro.requests)
    assert code == 1
    assert [checks[f"output ok: {c}"] for c in ("authenticated", "bucket exists")] == ["ok"] * 2
    assert checks["output ok: write permitted"] == "ok"
    assert checks["output badtoken: authenticated"] == "fail"
    assert checks["output nobucket: bucket exists"] == "fail"
    assert checks["output readonly: bucket exists"] == "ok"
    assert checks["output readonly: write permitted"] == "fail"


@pytest.mark.e2e
def test_broker_unreachable_and_wrong_password(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "edge", "Br0ker-pw"], check=True)
    broker = Mosquitto(
        tmp_path / "mosquitto", security=f"allow_anonymous false\npassword_file {passwd}"
    )
    with broker, FaultServer() as server:
        outputs = output_toml("out", server.url, "v1")
        config = write_config(
            tmp_path / "a.toml", broker.url, outputs, 'username = "edge"\npassword = "wrong-pw"'
        )
        code, checks = doctor(config)
        assert code == 1
        assert (checks["mqtt reachable"], checks["mqtt authenticated"]) == ("ok", "fail")
        config = write_config(
            tmp_path / "b.toml", broker.url, outputs, 'username = "edge"\npassword = "Br0ker-pw"'
        )
        assert doctor(config)[1]["mqtt authenticated"] == "ok"
        nobody = f"mqtt://127.0.0.1:{free_port()}"
        code, checks = doctor(write_config(tmp_path / "c.toml", nobody, outputs))
        assert code == 1
        assert (checks["mqtt reachable"], checks["mqtt authenticated"]) == ("fail", "skip")


@pytest.mark.e2e
def test_session_present_absent_and_beside_a_running_agent(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    influxdb.create_database("plants")
    agent = make_agent(
        mosquitto.url, output_toml("cloud", influxdb.url, "v1", flush_interval="0.1s")
    )
    agent.start()
    code, checks = doctor(agent.config)
    assert code == 0 and checks["mqtt session present"] == "ok"
    # Beside the running agent the doctor used an id of its own: the agent was not thrown off.
    assert agent.metric('edge_mqtt_connects_total{result="ok"}') == 1
    assert agent.metric("edge_mqtt_connected") == 1
    assert agent.stop() == 0

    # The agent is away; its session holds what is published meanwhile.
    pub = Publisher(mosquitto.url, "pub", qos=1)
    for i in range(30):
        pub.publish(f"plant/l1/sensor/s{i % 3}/temperature", str(i))
    assert pub.wait_acked(30, timeout=10)
    for _ in range(2):  # the doctor's look leaves the session as it was
        code, checks = doctor(agent.config)
        assert code == 0 and checks["mqtt session present"] == "ok"
    agent.start()
    deadline = time.monotonic() + 30
    while influxdb.count("plants", "temperature") < 30 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert influxdb.count("plants", "temperature") == 30  # none taken by the doctor
    assert agent.stop() == 0

    # The broker loses its store: the session is gone, and the doctor does not make one up.
    mosquitto.stop()
    for stored in mosquitto.db_dir.iterdir():
        stored.unlink()
    mosquitto.start()
    for _ in range(2):
        code, checks = doctor(agent.config)
        assert code == 1 and checks["mqtt session present"] == "fail"
    pub.close()


def test_invalid_config_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[mqtt]\nurl = "mqtt://127.0.0.1:1"\nbogus = 1\n')
    done = subprocess.run(
        [sys.executable, "-m", "agent", "doctor", "--config", str(config), "--json"],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert json.loads(done.stdout)["exit"] == 2
    assert b"bogus" in done.stderr


# -- the judgement alone -----------------------------------------------------------------------

MQTT = MQTTSection.model_validate(
    {"url": "mqtt://127.0.0.1:1883", "client_id": "edge-agent-x", "subscriptions": [{"topic": "a"}]}
)
V2 = OutputSection.model_validate({"name": "c", "url": "http://h:8086", "bucket": "b", "org": "o"})
STATUS = StatusSection()


def _statuses(checks: list[Any]) -> list[str]:
    return [c.status for c in checks]


def test_session_judged_by_the_running_agents_readyz() -> None:
    running = Agent(4242)
    connected = broker_checks(
        MQTT, running, BrokerAnswer(), {"ready": True, "problems": {}}, STATUS
    )
    assert _statuses(connected) == ["ok", "ok", "ok"] and "4242" in connected[2].detail
    down = {"ready": False, "problems": {"mqtt": "not connected to mqtt://127.0.0.1:1883"}}
    assert broker_checks(MQTT, running, BrokerAnswer(), down, STATUS)[2].status == "fail"
    silent = broker_checks(MQTT, running, BrokerAnswer(), {"error": "no answer"}, STATUS)
    assert silent[2].status == "skip"
    unsure = Agent(None, unknown="cannot read /var/lib/edge-agent: Permission denied")
    assert unsure.running


def test_session_absent_matters_only_once_the_agent_has_run() -> None:
    absent = BrokerAnswer(session_present=False)
    assert broker_checks(MQTT, Agent(None, has_run=False), absent, None, STATUS)[2].status == "skip"
    assert broker_checks(MQTT, Agent(None, has_run=True), absent, None, STATUS)[2].status == "fail"
    refused = BrokerAnswer(refused="Not authorized")
    assert _statuses(broker_checks(MQTT, Agent(None), refused, None, STATUS)) == [
        "ok",
        "fail",
        "skip",
    ]


def _look(status: int | None, message: str = "", listing: Listing | None = None) -> ServerLook:
    action = Action.SUCCESS if status == 204 else Action.CONFIG
    if status == 400:
        action = Action.BISECT
    write = Outcome(action, str(status), status, None, message)
    return ServerLook(Ping(None, None, "v2.7.1"), INFLUXDB, listing, write)


def test_an_empty_write_settles_credentials_bucket_and_permission() -> None:
    listed = Listing(200, frozenset({"b"}))
    assert _statuses(output_checks(V2, _look(400, "writing requires points", listed))) == ["ok"] * 4
    # A write-only token may list no bucket: the write endpoint still finds it.
    unlisted = output_checks(V2, _look(400, "writing requires points", Listing(200)))
    assert _statuses(unlisted) == ["ok"] * 4
    assert _statuses(output_checks(V2, _look(401, "unauthorized access"))) == [
        "ok",
        "fail",
        "skip",
        "skip",
    ]
    assert _statuses(output_checks(V2, _look(404, 'bucket "b" not found', Listing(200)))) == [
        "ok",
        "ok",
        "fail",
        "skip",
    ]
    assert _statuses(output_checks(V2, _look(403, "insufficient permissions", listed))) == [
        "ok",
        "ok",
        "ok",
        "fail",
    ]
    assert _statuses(output_checks(V2, _look(500, "internal error", listed)))[3] == "fail"
    unreachable = ServerLook(Ping(Outcome(Action.RETRY, "timeout", None, None, "no answer"), None))
    assert _statuses(output_checks(V2, unreachable)) == ["fail", "skip", "skip", "skip"]


def test_the_daemon_never_loads_the_doctors_libraries() -> None:
    """influxdb-client and the operator commands cost the agent's memory nothing."""
    code = (
        "import sys; from agent import cli, daemon; cli.build_parser(tools=False); "
        "print(sorted(m for m in sys.modules if m.startswith(('influxdb_client', 'agent.ops'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.stdout.strip() == b"[]", done.stderr
