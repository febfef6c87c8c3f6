"""The agent as a real subprocess, for end-to-end and crash tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from agent.tools.localservers import free_port

TEMPLATE = "plant/{line}/sensor/{sensor}/{measurement}"


def output_toml(name: str, url: str, api: str, **extra: Any) -> str:
    keys = {"name": name, "url": url, "api": api, **extra}
    if api == "v1":
        keys.setdefault("database", "plants")
    else:
        keys.setdefault("bucket", "plants")
        keys.setdefault("org", "acme")
    body = "\n".join(f"{k} = {_toml(v)}" for k, v in keys.items())
    return f"[[outputs]]\n{body}\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class AgentProcess:
    def __init__(
        self,
        workdir: Path,
        mqtt_url: str,
        outputs: str,
        extra: str = "",
        client_id: str = "",
        mqtt_extra: str = "",
    ) -> None:
        """``mqtt_extra``: TOML for the [mqtt] table (keys, then sub-tables such as [mqtt.tls])."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.status_port = free_port()
        self.config = workdir / "agent.toml"
        self.log_path = workdir / "agent.log"
        self.config.write_text(
            f"""
[agent]
name = "test"
data_dir = "{workdir / "data"}"
log_format = "json"
log_level = "info"
shutdown_grace = "5s"
[agent.tags]
plant = "p001"
[mqtt]
url = "{mqtt_url}"
client_id = "{client_id or "edge-agent-test"}"
reconnect_min = "0.2s"
reconnect_max = "2s"
{mqtt_extra}
[[mqtt.subscriptions]]
topic = "{TEMPLATE}"
format = "value"
qos = 1
[status]
listen = "127.0.0.1:{self.status_port}"
{extra}
{outputs}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}  # extra environment, e.g. libfaketime's

    def start(self, wait_connected: bool = True) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env=env,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.metrics().get("edge_mqtt_connected") == 1 or not wait_connected:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"agent did not connect and subscribe:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: the crash the spool must survive."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(self.status_port)

    def readyz(self) -> tuple[int, dict[str, Any]]:
        """/readyz's status code and JSON body (503 answers too)."""
        url = f"http://127.0.0.1:{self.status_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as answer:
            return answer.code, json.loads(answer.read())

    def metric(self, prefix: str) -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def scrape_metrics(port: int, timeout: float = 2.0) -> dict[str, float]:
    """An agent's /metrics on loopback, each series by its full name
    (``edge_spool_lines{stream="raw"}``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
