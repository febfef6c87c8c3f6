"""The fleet rollout (deploy/ansible): the playbook is well formed and lint-clean, the example
inventory renders a valid agent.toml for every gateway, and a rollout into a booted Debian
(systemd in a container) installs, starts and keeps the agent running.

The rollout runs ansible-playbook on this machine against the container through the
``community.docker.nsenter`` connection (shipped in Debian's ``ansible``): the play's modules run
in the container's namespaces as they would over SSH, with nothing installed there beforehand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import install
from lab.machine import Machine, booted

from agent.config import load_config
from agent.tools.localservers import InfluxDB1, Mosquitto, free_port
from agent.tools.simulate import Publisher

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "deploy" / "ansible"
EXAMPLE = ANSIBLE / "inventory" / "example"
VAULT_PASSWORD = EXAMPLE / "example-vault-password"
ROLE = ANSIBLE / "roles" / "edge_agent"
LINT_VENV = ROOT / ".cache" / "ansible-lint-venv"
# The example vault's secrets (group_vars/gateways/vault.yml), as the gateway must receive them.
SECRETS = {
    "influx-token": "example-influx-token-0123456789",
    "mqtt-password": "example-mqtt-password",
}


def _require(command: str) -> str:
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"{command} is missing: run `scripts/dev test`", pytrace=False)
    return path


def playbook(
    *args: str, log: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """ansible-playbook in deploy/ansible, plain output, whatever its exit code; ``log`` keeps
    every run's output (with timestamps) for a post-mortem."""
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        **({"ANSIBLE_LOG_PATH": str(log)} if log else {}),
    }
    return subprocess.run(
        [_require("ansible-playbook"), "--vault-password-file", str(VAULT_PASSWORD), *args],
        cwd=ANSIBLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def recap(run: subprocess.CompletedProcess[str], host: str) -> dict[str, int]:
    """The host's line of PLAY RECAP: ok, changed, unreachable, failed, ..."""
    line = re.search(rf"^{re.escape(host)}\s*:(.*)$", run.stdout, re.M)
    assert line, f"no recap for {host}:\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.group(1))}


# --- fast: the playbook, the lint, the example inventory ----------------------------------------
def test_playbook_syntax() -> None:
    run = playbook("-i", str(EXAMPLE / "hosts.yml"), "--syntax-check", "site.yml")
    assert run.returncode == 0, run.stdout + run.stderr


def test_ansible_lint_production_profile() -> None:
    lint = LINT_VENV / "bin" / "ansible-lint"
    if not lint.exists():
        pytest.fail(f"{lint} is missing: run `scripts/dev test`", pytrace=False)
    env = {
        **os.environ,
        "PATH": f"{lint.parent}:{os.environ['PATH']}",
        "ANSIBLE_VAULT_PASSWORD_FILE": str(VAULT_PASSWORD),
        "NO_COLOR": "1",
    }
    run = subprocess.run(
        [str(lint)],  # deploy/ansible/.ansible-lint: the production profile, offline
        cwd=ANSIBLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr


RENDER = """\
- name: Render the role's files for each gateway, as the role would
  hosts: gateways
  connection: local
  gather_facts: false
  tasks:
    - name: Create the gateway's folders
      ansible.builtin.file:
        path: "{out}/{{{{ inventory_hostname }}}}/credentials"
        state: directory
        mode: "0700"
    - name: Render agent.toml and the drop-in
      ansible.builtin.template:
        src: "{role}/templates/{{{{ item }}}}.j2"
        dest: "{out}/{{{{ inventory_hostname }}}}/{{{{ item }}}}"
        mode: "0600"
      loop: [agent.toml, credentials.conf]
    - name: Write the credentials
      ansible.builtin.copy:
        content: "{{{{ item.content | default(omit) }}}}"
        src: "{{{{ item.src | default(omit) }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}/credentials/{{{{ item.name }}}}"
        mode: "0600"
      loop: "{{{{ edge_agent_credentials }}}}"
"""


def test_example_inventory_renders_valid_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every example gateway's agent.toml passes the agent's own validation with the secrets
    the vault gives it, and every secret it names is a LoadCredential= of its drop-in."""
    out = tmp_path / "out"
    # The role's defaults, below the inventory's variables as they are below them in a play.
    defaults = tmp_path / "inventory" / "group_vars" / "all"
    defaults.mkdir(parents=True)
    shutil.copy(ROLE / "defaults" / "main.yml", defaults / "defaults.yml")
    shutil.copy(ROLE / "vars" / "main.yml", defaults / "vars.yml")
    (tmp_path / "inventory" / "hosts.yml").write_text("{}\n")
    (tmp_path / "render.yml").write_text(RENDER.format(role=ROLE, out=out))
    run = playbook(
        "-i",
        str(EXAMPLE / "hosts.yml"),
        "-i",
        str(tmp_path / "inventory" / "hosts.yml"),
        str(tmp_path / "render.yml"),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    hosts = sorted(p.name for p in out.iterdir())
    assert hosts == ["gw-lyon-01", "gw-lyon-02", "gw-porto-01"]
    for host in hosts:
        credentials = out / host / "credentials"
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
        cfg = load_config(out / host / "agent.toml")
        assert cfg.agent.tags["plant"] in {"p001", "p002"}
        assert cfg.outputs[0].token is not None
        assert cfg.outputs[0].token.get_secret_value() == SECRETS["influx-token"]
        loaded = re.findall(
            r"^LoadCredential=([^:\n]+):", (out / host / "credentials.conf").read_text(), re.M
        )
        assert sorted(loaded) == sorted(p.name for p in credentials.iterdir())
        named = set(
            re.findall(
                r"\$\{CREDENTIALS_DIRECTORY\}/([\w.-]+)", (out / host / "agent.toml").read_text()
            )
        )
        assert named <= set(loaded), f"{host}: {named - set(loaded)} not loaded"
        assert not any(s in (out / host / "agent.toml").read_text() for s in SECRETS.values())


# --- slow: a rollout into a booted Debian ------------------------------------------------------
N = 500
# A secret of another service in systemd's credential store, which the role must leave alone.
FOREIGN = "other-service-key"


@pytest.fixture
def influxdb_auth(tmp_path: Path) -> Iterator[InfluxDB1]:
    """InfluxDB 1.x that refuses writes without the password the vault holds: points arrive
    only if the secret travelled from the vault through the credentials to the agent."""
    with InfluxDB1(tmp_path / "influxdb", admin=("edge-agent", SECRETS["influx-token"])) as server:
        yield server


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Machine]:
    """A fresh Debian, booted, with nothing of the agent on it."""
    workdir = tmp_path / "gateway"
    workdir.mkdir()
    with booted(workdir) as machine:
        yield machine


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_count(influxdb: InfluxDB1, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = influxdb.count("plants", "temperature")
        if count >= expected:
            return count
        time.sleep(0.5)
    return count


@pytest.mark.container
def test_rollout_to_a_booted_gateway(
    tmp_path: Path, gateway: Machine, mosquitto: Mosquitto, influxdb_auth: InfluxDB1
) -> None:
    influxdb = influxdb_auth
    influxdb.create_database("plants")
    status_port = free_port()
    inventory = tmp_path / "inventory"
    (inventory / "host_vars").mkdir(parents=True)
    # nsenter always enters as root; the example's ansible_user (deploy) would name its home.
    (inventory / "hosts.yml").write_text(
        "gateways:\n  hosts:\n    gw-test:\n"
        "      ansible_connection: community.docker.nsenter\n"
        f"      ansible_nsenter_pid: {gateway.leader}\n"
        "      ansible_user: root\n"
    )
    # This gateway's own variables; the rest (subscriptions, the secrets from the vault) comes
    # from the example inventory's group_vars/gateways, as for any gateway of the fleet.
    host_vars: dict[str, Any] = {
        "edge_agent_name": "gw-test",
        "edge_agent_tags": {"plant": "p-test"},
        "edge_agent_mqtt": {
            "url": mosquitto.url,
            "username": "edge-agent",
            "password_file": "${CREDENTIALS_DIRECTORY}/mqtt-password",
        },
        "edge_agent_outputs": [
            {
                "name": "influx",
                "url": influxdb.url,
                "api": "v1",
                "database": "plants",
                "username": "edge-agent",
                "password_file": "${CREDENTIALS_DIRECTORY}/influx-token",
                "flush_interval": "200ms",
            }
        ],
        "edge_agent_aggregations": [],
        "edge_agent_status_listen": f"127.0.0.1:{status_port}",
        "edge_agent_spool": {"max_size": "64MiB", "min_free_disk": "16MiB"},
    }
    (inventory / "host_vars" / "gw-test.yml").write_text(json.dumps(host_vars))
    # The wheel built as docs/fleet.md says; the unit is the repository's (the role's default).
    extra = {"edge_agent_wheel": str(install.wheel(tmp_path / "dist"))}
    gateway.sh(f"install -d -m 0700 /etc/credstore; (umask 077; echo x > /etc/credstore/{FOREIGN})")
    log = tmp_path / "ansible.log"
    args = (
        "-i",
        str(EXAMPLE / "hosts.yml"),
        "-i",
        str(inventory / "hosts.yml"),
        "--limit",
        "gw-test",
        "site.yml",
    )

    started = time.monotonic()
    first = playbook(*args, "-e", json.dumps(extra), log=log)
    first_s = time.monotonic() - started
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    assert recap(first, "gw-test")["failed"] == 0
    assert gateway.show("edge-agent.service", "ActiveState") == "active"
    pid = gateway.show("edge-agent.service", "MainPID")
    assert readyz(status_port)[0] == 200

    # The secrets arrived as credentials, and nowhere else.
    listing = gateway.sh("stat -c '%a %U %n' /etc/credstore/*").split("\n")
    assert sorted(filter(None, listing)) == sorted(
        f"600 root /etc/credstore/{name}" for name in [*SECRETS, FOREIGN]
    )
    for name, secret in SECRETS.items():
        loaded = gateway.sh(f"cat /run/credentials/edge-agent.service/{name}")
        assert loaded.strip() == secret
    config = gateway.sh("cat /etc/edge-agent/agent.toml")
    assert not any(secret in config for secret in SECRETS.values())

    # Readings flow from the broker into InfluxDB, each once.
    pub = Publisher(mosquitto.url, "ansible-test-publisher", qos=1)
    for seq in range(N):
        pub.publish(f"plant/line-1/sensor/s{seq % 10:02d}/temperature", str(seq))
    assert pub.wait_acked(N, timeout=60)
    pub.close()
    assert wait_count(influxdb, N, timeout=60) == N
    rows = influxdb.rows("plants", "temperature")
    assert sorted(r["value"] for r in rows) == list(range(N))
    assert {r["plant"] for r in rows} == {"p-test"}

    # A second run changes nothing and restarts nothing.
    started = time.monotonic()
    second = playbook(*args, "-e", json.dumps(extra), log=log)
    second_s = time.monotonic() - started
    assert second.returncode == 0, second.stdout[-6000:] + second.stderr[-3000:]
    assert recap(second, "gw-test")["changed"] == 0, second.stdout[-6000:]
    assert gateway.show("edge-agent.service", "MainPID") == pid

    # A config the agent would refuse never reaches it: the play fails at validation, the live
    # config stays, the agent keeps running, ready, with the same process.
    bad = {**extra, "edge_agent_spool": {"max_sise": "1GiB"}}
    third = playbook(*args, "-e", json.dumps(bad), log=log)
    assert third.returncode != 0
    assert recap(third, "gw-test")["failed"] == 1
    assert "spool.max_sise: unknown key" in third.stdout, third.stdout[-6000:]
    assert gateway.sh("cat /etc/edge-agent/agent.toml") == config
    assert gateway.show("edge-agent.service", "ActiveState") == "active"
    assert gateway.show("edge-agent.service", "MainPID") == pid
    assert readyz(status_port)[0] == 200

    # A config naming a secret the gateway would not get is refused before anything changes.
    typo = {
        **extra,
        "edge_agent_mqtt": {
            **host_vars["edge_agent_mqtt"],
            "password_file": "${CREDENTIALS_DIRECTORY}/mqtt-passwd",
        },
    }
    fourth = playbook(*args, "-e", json.dumps(typo), log=log)
    assert recap(fourth, "gw-test")["failed"] == 1
    assert recap(fourth, "gw-test")["changed"] == 0
    assert "${CREDENTIALS_DIRECTORY}/mqtt-passwd" in fourth.stdout, fourth.stdout[-6000:]
    assert gateway.show("edge-agent.service", "MainPID") == pid

    # A secret dropped from the inventory leaves the gateway (another service's stays), and the
    # agent restarts on the new set and carries on.
    fewer = {
        **extra,
        "edge_agent_mqtt": {"url": mosquitto.url},
        "edge_agent_credentials": [{"name": "influx-token", "content": "{{ vault_influx_token }}"}],
    }
    fifth = playbook(*args, "-e", json.dumps(fewer), log=log)
    assert fifth.returncode == 0, fifth.stdout[-6000:] + fifth.stderr[-3000:]
    assert gateway.sh("ls /etc/credstore").split() == sorted(["influx-token", FOREIGN])
    assert gateway.sh("ls /run/credentials/edge-agent.service").split() == ["influx-token"]
    assert gateway.show("edge-agent.service", "MainPID") != pid
    assert readyz(status_port)[0] == 200
    pub = Publisher(mosquitto.url, "ansible-test-publisher", qos=1)
    for seq in range(N, 2 * N):
        pub.publish(f"plant/line-1/sensor/s{seq % 10:02d}/temperature", str(seq))
    assert pub.wait_acked(N, timeout=60)
    pub.close()
    assert wait_count(influxdb, 2 * N, timeout=60) == 2 * N
    assert sorted(r["value"] for r in influxdb.rows("plants", "temperature")) == list(range(2 * N))
    print(f"first run {first_s:.0f} s, second run {second_s:.0f} s")
