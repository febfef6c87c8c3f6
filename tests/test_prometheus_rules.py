"""The alert rules in deploy/prometheus: promtool checks and unit tests, then a real Prometheus
scraping a real agent sees them fire."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentproc import output_toml
from conftest import AgentFactory

from agent.tools.localservers import Prometheus, free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = DEPLOY / "edge-agent.rules.yml"
EXAMPLE = DEPLOY / "prometheus.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found; run `scripts/dev test` to install prometheus", False)
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_example_config_passes_promtool_check(tmp_path: Path) -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["rule_files"] = [str(RULES)]  # where the example expects them to be installed
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = promtool("check", "config", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_pass() -> None:
    tests = sorted(str(p) for p in (DEPLOY / "tests").glob("*.yml"))
    assert tests
    done = promtool("test", "rules", *tests)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_says_how_bad_what_and_what_to_do() -> None:
    """Each rule waits (``for``), carries a severity, a summary, a description and a runbook
    hint pointing at its section of docs/dashboards.md, and every alert is unit-tested."""
    docs = (DEPLOY.parent.parent / "docs" / "dashboards.md").read_text()
    tested = (DEPLOY / "tests" / "edge-agent.test.yml").read_text()
    for rule in rules():
        name = rule["alert"]
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert {"summary", "description", "runbook"} <= notes.keys(), name
        assert notes["runbook"].endswith(f"docs/dashboards.md#{name.lower()}"), name
        assert f"### {name}\n" in docs, name
        assert f"alertname: {name}\n" in tested, name


@pytest.mark.e2e
def test_a_real_prometheus_fires_on_a_real_agent(tmp_path: Path, make_agent: AgentFactory) -> None:
    """The example scrape config and the rules (their ``for`` cut to a second) on a Prometheus
    scraping an agent whose broker is gone: MQTT down fires; once the agent is killed, agent
    down fires."""
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: the broker and the server are gone
    agent = make_agent(f"mqtt://{dead}", output_toml("cloud", f"http://{dead}", "v1"))
    agent.start(wait_connected=False)

    quick = yaml.safe_load(RULES.read_text())
    for group in quick["groups"]:
        for rule in group["rules"]:
            rule["for"] = "1s"
    rules_path = tmp_path / "rules.yml"
    rules_path.write_text(yaml.safe_dump(quick))
    config = yaml.safe_load(EXAMPLE.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules_path)]
    (job,) = config["scrape_configs"]
    job["scrape_timeout"] = "1s"
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{agent.status_port}"]
    prometheus = Prometheus(tmp_path / "prometheus", yaml.safe_dump(config))
    prometheus.start()
    try:
        mqtt_down = wait_for_alert(prometheus, "EdgeAgentMQTTDown", 30)
        assert mqtt_down["labels"]["instance"] == f"127.0.0.1:{agent.status_port}"
        assert mqtt_down["labels"]["severity"] == "critical"
        assert mqtt_down["labels"]["plant"] == "p001"  # the example's target label
        agent.kill()
        wait_for_alert(prometheus, "EdgeAgentDown", 30)
    finally:
        prometheus.stop()


def wait_for_alert(prometheus: Prometheus, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        alerts = prometheus.api("/api/v1/alerts")["alerts"]
        for alert in alerts:
            if alert["labels"]["alertname"] == name and alert["state"] == "firing":
                return dict(alert)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{name} not firing after {timeout:.0f}s; alerts: {alerts}\n{prometheus.log_tail()}"
            )
        time.sleep(0.5)
