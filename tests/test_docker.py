"""docker/: the image and the compose stack.

Run here: the image built from docker/Dockerfile (on a Debian base imported from a debootstrap
rootfs, since no registry is reachable) and the agent in a container against the test's real
mosquitto and InfluxDB 1.x, with an exact count read back. Validated only: the compose stack
(its images, influxdb:2, grafana and eclipse-mosquitto, cannot be pulled here), with
docker-compose's own parser, and the parts of it that run on this machine: the agent's config
and the broker's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import dockerd, rootfs

from agent.config import load_config
from agent.tools.localservers import InfluxDB1, Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
COMPOSE = DOCKER_DIR / "compose.yaml"
SERVICES = {"mosquitto", "influxdb", "grafana", "agent", "simulate"}
AGENT_UID = 10001


# --- the compose stack: validated -------------------------------------------------------------
def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose not found: run `scripts/dev test`", pytrace=False)
    return subprocess.run(
        [exe, "-f", str(COMPOSE), *args], capture_output=True, text=True, timeout=60
    )


def _compose_config() -> dict[str, Any]:
    """The stack as docker-compose resolves it (paths absolute, defaults filled in)."""
    resolved = _compose("config")
    assert resolved.returncode == 0, resolved.stderr
    config: dict[str, Any] = _yaml(resolved.stdout)
    return config


def _yaml(text: str) -> Any:
    """Parsed by the interpreter docker-compose itself runs on, which has PyYAML: the agent's
    venv has not."""
    to_json = "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"
    parsed = subprocess.run(
        ["/usr/bin/python3", "-c", to_json],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return json.loads(parsed.stdout)


def test_compose_file_is_valid() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_stack_wiring() -> None:
    config = _compose_config()
    services = config["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        if name not in ("agent", "simulate"):  # the agent's comes with its image
            assert "test" in service["healthcheck"], f"{name} has no healthcheck"
    agent = services["agent"]
    assert agent["depends_on"] == {
        "mosquitto": {"condition": "service_healthy"},
        "influxdb": {"condition": "service_healthy"},
    }
    assert services["simulate"]["depends_on"]["agent"] == {"condition": "service_healthy"}
    assert services["simulate"]["healthcheck"] == {"test": ["NONE"]}  # disable: true
    # The agent's token is a secret file, never an environment variable.
    secrets = {s["source"] for s in agent["secrets"]}
    assert not any("TOKEN" in key for key in agent.get("environment", {}))
    outputs = tomllib.loads((DOCKER_DIR / "agent.toml").read_text())["outputs"]
    for output in outputs:
        token_file = Path(output["token_file"])
        assert token_file.parent == Path("/run/secrets")
        assert token_file.name in secrets
        assert token_file.name in config["secrets"]


def _grafana_mounts() -> dict[str, Path]:
    """Grafana's bind mounts of deploy/grafana: container path -> host path."""
    volumes = _compose_config()["services"]["grafana"]["volumes"]
    mounts = {}
    for volume in volumes:
        source, target, *_ = volume.split(":")
        if source.startswith("/"):
            mounts[target] = Path(source)
    return mounts


def test_grafana_gets_deploy_grafana() -> None:
    """The provisioning of deploy/grafana finds, at the paths it names, what compose mounts."""
    mounts = _grafana_mounts()
    grafana = ROOT / "deploy" / "grafana"
    assert all(m.is_relative_to(grafana) for m in mounts.values())
    assert mounts["/etc/grafana/provisioning/datasources"].name == "datasources-influxdb2"
    assert all(m.is_dir() for m in mounts.values())
    providers = _yaml(
        (mounts["/etc/grafana/provisioning/dashboards"] / "edge-agent.yaml").read_text()
    )
    dashboards = Path(providers["providers"][0]["options"]["path"])
    assert mounts[str(dashboards)] == grafana / "dashboards"


def test_influxdb_init_script_maps_every_dashboard_database(tmp_path: Path) -> None:
    """The init script run against a stand-in ``influx`` that records its arguments (no
    InfluxDB 2 or its CLI here): a bucket and a DBRP mapping for every database the
    datasources query, and for every bucket docker/agent.toml writes to."""
    script = DOCKER_DIR / "influxdb" / "init-buckets.sh"
    assert script.stat().st_mode & 0o111, "the image runs only executable init scripts"
    log = tmp_path / "influx.log"
    fake = tmp_path / "influx"
    fake.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n'
        '[ "$1 $2" = "bucket create" ] && printf "id-%s\\tname\\n" "$6"\nexit 0\n'
    )
    fake.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "DOCKER_INFLUXDB_INIT_ORG": "acme",
        "DOCKER_INFLUXDB_INIT_BUCKET": "plants",
        "DOCKER_INFLUXDB_INIT_BUCKET_ID": "id-plants",
    }
    subprocess.run(["sh", str(script)], env=env, check=True, timeout=10)
    mapped = {}
    for line in log.read_text().splitlines():
        args = line.split()
        if args[:3] == ["v1", "dbrp", "create"]:
            opts, rest = {}, args[3:]
            while rest:
                key = rest.pop(0)
                opts[key] = rest.pop(0) if rest and not rest[0].startswith("--") else ""
            assert (opts["--org"], opts["--rp"], opts["--default"]) == ("acme", "autogen", "")
            mapped[opts["--db"]] = opts["--bucket-id"]
    assert all(mapped[db] == f"id-{db}" for db in mapped)
    outputs = tomllib.loads((DOCKER_DIR / "agent.toml").read_text())["outputs"]
    assert {o["bucket"] for o in outputs} <= set(mapped)
    datasources = ROOT / "deploy/grafana/provisioning/datasources-influxdb2/edge.yaml"
    queried = {d["jsonData"]["dbName"] for d in _yaml(datasources.read_text())["datasources"]}
    assert queried == set(mapped)


def test_docker_agent_config_names_the_compose_services(tmp_path: Path) -> None:
    (tmp_path / "influx_token").write_text("token\n")
    text = (DOCKER_DIR / "agent.toml").read_text().replace("/run/secrets/", f"{tmp_path}/")
    (tmp_path / "agent.toml").write_text(text)
    cfg = load_config(tmp_path / "agent.toml")
    assert cfg.mqtt.host in SERVICES
    for output in cfg.outputs:
        assert output.url.startswith("http://influxdb:8086")
        assert output.token is not None


def _directives(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


class DockerBroker(Mosquitto):
    """docker/mosquitto.conf with its listener and data path moved under the test's folder."""

    def _prepare(self) -> None:
        self.db_dir.mkdir(exist_ok=True)
        text = (DOCKER_DIR / "mosquitto.conf").read_text()
        text = text.replace("listener 1883", f"listener {self.port} 127.0.0.1")
        text = text.replace("/mosquitto/data/", f"{self.db_dir}/")
        self.conf_path.write_text(text)


def test_docker_broker_config_matches_the_example_and_passes_its_healthcheck(
    tmp_path: Path,
) -> None:
    ours = _directives(DOCKER_DIR / "mosquitto.conf")
    example = _directives(ROOT / "config" / "mosquitto.conf")
    assert ours.pop("persistence_location") == "/mosquitto/data/"
    assert ours.pop("log_dest") == "stdout"
    example.pop("persistence_location")
    assert ours == example
    broker = DockerBroker(tmp_path / "mosquitto")
    broker.start()
    try:  # the compose file's healthcheck, run against it
        check = _compose_config()["services"]["mosquitto"]["healthcheck"]["test"]
        assert check[0] == "CMD"
        argv = [arg.replace("$$", "$") for arg in check[1:]]
        subprocess.run([*argv, "-p", str(broker.port)], check=True, timeout=10)
    finally:
        broker.stop()


# --- the image: built and run -----------------------------------------------------------------
@pytest.fixture(scope="module")
def docker() -> Iterator[dockerd.Docker]:
    try:
        with dockerd.daemon() as d:
            yield d
    except rootfs.LabUnavailable as exc:
        pytest.fail(f"{exc} (or deselect these tests: -m 'not docker')", pytrace=False)


@pytest.fixture(scope="module")
def image(docker: dockerd.Docker) -> str:
    """docker/Dockerfile built FROM the imported Debian base, on the host network (the build's
    pip reaches the package index the machine reaches)."""
    base = dockerd.base_image(docker)
    tag = "edge-agent:test"
    build = ["build", "--network=host", f"--build-arg=BASE={base}"]
    build += ["--file", str(DOCKER_DIR / "Dockerfile")]
    # The builder stage is tagged too: the prune below would otherwise take its layers, the
    # next build's cache, for dangling ones.
    docker(*build, "--target=builder", "--tag", f"{tag}-builder", str(ROOT), timeout=900)
    docker(*build, "--tag", tag, str(ROOT), timeout=900)
    docker("image", "prune", "--force")  # earlier builds' layers: the cache stays bounded
    return tag


def _inspect(docker: dockerd.Docker, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(docker.out("inspect", name))
    return found[0]


def _wait_healthy(docker: dockerd.Docker, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _inspect(docker, name)["State"]
        if not state["Running"]:
            pytest.fail(f"container exited with {state['ExitCode']}:\n{_logs(docker, name)}")
        if state["Health"]["Status"] == "healthy":
            return
        time.sleep(0.5)
    pytest.fail(f"container not healthy after {timeout:.0f}s:\n{_logs(docker, name)}")


def _logs(docker: dockerd.Docker, name: str) -> str:
    result = docker("logs", "--tail", "40", name, check=False)
    return result.stdout + result.stderr


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _wait_for(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def _uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem UIDs of a host process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(u) for u in line.split()[1:]]
    raise AssertionError(f"no Uid line for pid {pid}")


@pytest.mark.docker
def test_agent_container_delivers_every_reading(
    docker: dockerd.Docker,
    image: str,
    mosquitto: Mosquitto,
    influxdb: InfluxDB1,
    tmp_path: Path,
) -> None:
    """The image's default command, as a non-root user, with its config and a secret mounted:
    healthy, every simulated reading in InfluxDB exactly once, a clean exit on docker stop."""
    influxdb.create_database("plants")
    status_port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[agent]
name = "container"
data_dir = "/var/lib/edge-agent"
[mqtt]
url = "{mosquitto.url}"
client_id = "edge-agent-container"
[[mqtt.subscriptions]]
topic = "plant/{{line}}/sensor/{{sensor}}/{{measurement}}"
[[outputs]]
name = "influx"
url = "{influxdb.url}"
api = "v1"
database = "plants"
username = "edge"
password_file = "/run/secrets/influx_password"
"""
    )
    secret = tmp_path / "influx_password"
    secret.write_text("not-checked-by-influxdb-1.x\n")
    secret.chmod(0o644)
    name = f"edge-agent-test-{status_port}"
    docker(
        "run", "--detach", "--name", name, "--network=host",
        "--volume", f"{config}:/etc/edge-agent/agent.toml:ro",
        "--volume", f"{secret}:/run/secrets/influx_password:ro",
        "--env", f"EDGE_STATUS__LISTEN=127.0.0.1:{status_port}",
        "--health-interval=1s",
        image,
    )  # fmt: skip
    try:
        _wait_healthy(docker, name)
        info = _inspect(docker, name)
        assert info["Config"]["User"] == f"{AGENT_UID}:{AGENT_UID}"
        assert _uids(info["State"]["Pid"]) == [AGENT_UID] * 4
        assert info["Config"]["Entrypoint"] == ["edge-agent"]
        assert info["Config"]["Cmd"] == ["run", "--config", "/etc/edge-agent/agent.toml"]
        spool = [m for m in info["Mounts"] if m["Destination"] == "/var/lib/edge-agent"]
        assert [m["Type"] for m in spool] == ["volume"]
        _wait_for(lambda: _metric(status_port, "edge_mqtt_connected") == 1, "MQTT", 30)

        published = docker(
            "run", "--rm", "--network=host", "--no-healthcheck", image,
            "simulate", "--url", mosquitto.url, "--count", "400", "--rate", "0",
            "--lines", "2", "--sensors", "4",
        )  # fmt: skip
        summary = json.loads(published.stdout)
        assert summary["acknowledged"] == 400

        def arrived() -> dict[str, int]:
            return {m: influxdb.count("plants", m) for m in summary["by_measurement"]}

        _wait_for(lambda: arrived() == summary["by_measurement"], "400 points", 60)
        time.sleep(2)  # nothing more arrives later: exactly once
        assert arrived() == summary["by_measurement"]

        docker("stop", "--time", "30", name, timeout=60)
        assert _inspect(docker, name)["State"]["ExitCode"] == 0, _logs(docker, name)
    finally:
        docker("rm", "--force", "--volumes", name, check=False)


@pytest.mark.docker
def test_simulator_container_stops_on_its_stop_signal(
    docker: dockerd.Docker, image: str, mosquitto: Mosquitto
) -> None:
    """The compose file's simulator stops with SIGINT: as PID 1 without a SIGTERM handler it
    would ignore docker's default SIGTERM and be killed only after the grace period."""
    name = f"edge-simulate-test-{mosquitto.port}"
    docker(
        "run", "--detach", "--name", name, "--network=host", "--no-healthcheck",
        "--stop-signal=SIGINT", image,
        "simulate", "--url", mosquitto.url, "--prefix", "elsewhere", "--rate", "20",
    )  # fmt: skip
    try:
        # Stopped once it publishes: a SIGINT while Python still imports would end it with a
        # traceback instead of its summary.
        subprocess.run(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port),
             "-t", "elsewhere/#", "-C", "1"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        started = time.monotonic()
        docker("stop", "--time", "20", name, timeout=60)
        assert time.monotonic() - started < 10
        assert _inspect(docker, name)["State"]["ExitCode"] == 0, _logs(docker, name)
        assert json.loads(_logs(docker, name).strip().splitlines()[-1])["published"] > 0
    finally:
        docker("rm", "--force", "--volumes", name, check=False)
