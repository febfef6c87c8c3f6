"""Operator commands beside a real agent and after it stopped: real mosquitto, real InfluxDB, the
agent and every command as subprocesses.

One output ("cloud") points at a dead port, so its backlog is every reading published; another
("live") drains into InfluxDB, so the exported lines can be compared point for point with what the
agent itself delivered.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from agentproc import AgentProcess, output_toml
from conftest import AgentFactory

from agent.ops.times import NS
from agent.tools.localservers import InfluxDB1, Mosquitto, free_port
from agent.tools.simulate import Publisher

pytestmark = pytest.mark.e2e

N = 3000  # published before the commands run
M = 2000  # published while they run
CLOUD = 'edge_output_backlog_lines{output="cloud",stream="raw"}'


def publish(url: str, first: int, n: int, rate: float = 0.0) -> None:
    """QoS 1, value = sequence number, 20 sensors; returns once the broker acknowledged all."""
    pub = Publisher(url, f"publisher-{first}", qos=1)
    start = time.monotonic()
    for seq in range(first, first + n):
        pub.publish(f"plant/line-{seq % 2}/sensor/s{seq % 20:02d}/temperature", str(seq))
        if rate and seq % 100 == 0:
            time.sleep(max(0.0, start + (seq - first) / rate - time.monotonic()))
    assert pub.wait_acked(n, timeout=60), f"broker acknowledged {pub.acked} of {n}"
    pub.close()


def edge(
    config: Path, *argv: str, stdout: Any = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *argv, "--config", str(config)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


def edge_json(config: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    done = edge(config, *argv, "--json")
    return done.returncode, json.loads(done.stdout)


def wait_for(check: Any, what: str, agent: AgentProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{agent.log_tail()}")


def rfc3339(ns: int) -> str:
    seconds, fraction = divmod(ns, NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def points(influx: InfluxDB1, db: str) -> list[tuple[int, int]]:
    return sorted((row["time"], int(row["value"])) for row in influx.rows(db, "temperature"))


def flip_a_body_byte(spool: Path, cid: int) -> None:
    """Damage chunk ``cid`` on disk, in the file, the way a bad sector would."""
    db = sqlite3.connect(spool)
    body = bytes(db.execute("SELECT body FROM chunks WHERE id=?", (cid,)).fetchone()[0])
    db.close()
    data = bytearray(spool.read_bytes())
    for start in range(len(body) // 2, len(body) - 24):  # a run that no page header splits
        at = data.find(body[start : start + 24])
        if at >= 0:
            data[at + 12] ^= 0xFF
            spool.write_bytes(bytes(data))
            return
    raise AssertionError(f"chunk {cid}'s body not found in {spool}")


def copy_of(agent: AgentProcess, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A copy of the stopped agent's data dir and a config pointing at it."""
    data = tmp_path / name
    shutil.copytree(agent.workdir / "data", data)
    config = tmp_path / f"{name}.toml"
    config.write_text(agent.config.read_text().replace(str(agent.workdir / "data"), str(data)))
    return config, data / "spool.db"


def test_operator_commands_beside_a_running_agent_and_after(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory, tmp_path: Path
) -> None:
    for db in ("plants", "live", "usb"):
        influxdb.create_database(db)
    agent = make_agent(
        mosquitto.url,
        output_toml("cloud", f"http://127.0.0.1:{free_port()}", "v1", retry_max_backoff="1s")
        + output_toml("live", influxdb.url, "v1", database="live", flush_interval="0.2s"),
        # No NTP here: readings would be held, not spooled. No telemetry: the backlogs and
        # exports counted below are exactly the readings published (docs/telemetry.md).
        extra='[clock]\ntrust = "system"\n[telemetry]\ninterval = "0"',
    )
    config = agent.config
    agent.start()
    publish(mosquitto.url, 0, N)
    wait_for(lambda: agent.metrics().get(CLOUD) == N, f"a backlog of {N}", agent)
    wait_for(lambda: influxdb.count("live", "temperature") == N, "live to drain", agent)

    # -- beside the running agent, while it takes M more readings --------------------------------
    more = threading.Thread(target=publish, args=(mosquitto.url, N, M, 1000.0))
    more.start()
    began = time.monotonic()
    code, during = edge_json(config, "status")
    status_seconds = time.monotonic() - began
    assert code == 1, during  # cloud is stalled
    assert during["agent"]["running"] and during["agent"]["live"]
    assert edge(config, "spool", "check").returncode == 0
    assert (
        edge(config, "spool", "export", "--output", "cloud", stdout=subprocess.DEVNULL).returncode
        == 0
    )
    more.join(timeout=60)
    total = N + M
    wait_for(lambda: agent.metrics().get(CLOUD) == total, f"a backlog of {total}", agent)
    wait_for(lambda: influxdb.count("live", "temperature") == total, "live to drain", agent)
    assert agent.metric("edge_readings_committed_total") == total  # nothing lost meanwhile

    code, running = edge_json(config, "status")
    assert code == 1
    cloud, live = running["outputs"]
    assert (cloud["name"], cloud["lines"], cloud["health"]) == ("cloud", total, "stalled")
    assert cloud["problem"].startswith(f"{total} lines wait and no write was accepted since")
    assert cloud["last_success"] is None
    assert (live["name"], live["lines"], live["health"]) == ("live", 0, "ok")
    assert live["last_success"] is not None and live["last_success_age_s"] < 30
    assert running["agent"]["mqtt_connected"] is True and running["agent"]["ready"] is True
    assert running["agent"]["pid"] == agent.proc.pid  # type: ignore[union-attr]
    assert running["drops_since_start"] == {}
    assert running["problems"] == [f"output cloud: {cloud['problem']}"]
    assert running["spool"]["streams"]["raw"]["lines"] == total
    text = edge(config, "status")
    assert text.returncode == 1
    assert "running (pid" in text.stdout and "MQTT connected" in text.stdout
    assert f"cloud   stalled  {total}" in text.stdout

    code, checked = edge_json(config, "spool", "check")
    assert code == 0, checked
    assert checked["agent_running"] is True
    assert checked["checks"][1]["lines"] == total

    usb = tmp_path / "usb.lp"
    with usb.open("w") as out:
        done = edge(config, "spool", "export", "--output", "cloud", stdout=out)
    assert done.returncode == 0, done.stderr
    assert f"exported {total} lines" in done.stderr
    assert "the output's cursor did not move" in done.stderr
    lines = usb.read_text()
    assert len(lines.splitlines()) == total
    influxdb.write("usb", lines)
    influxdb.write("usb", lines)  # twice: the same points, overwritten
    assert influxdb.count("usb", "temperature") == total
    assert points(influxdb, "usb") == points(influxdb, "live")  # what the agent itself delivered

    refused = edge(config, "spool", "export", "--output", "cloud", "--advance")
    assert refused.returncode == 3
    assert "--advance needs the agent stopped" in refused.stderr
    assert refused.stdout == ""

    # -- after it stopped ------------------------------------------------------------------------
    assert agent.stop() == 0
    code, stopped = edge_json(config, "status")
    assert code == 1
    cloud, live = stopped["outputs"]
    assert (cloud["lines"], cloud["bytes"], cloud["health"]) == (total, len(lines), "unknown")
    assert (live["lines"], live["health"]) == (0, "unknown")
    assert stopped["agent"]["running"] is False and stopped["drops_since_start"] is None
    assert stopped["problems"][0].startswith("the agent is not running")
    assert "agent 'test': not running" in edge(config, "status").stdout
    assert edge(config, "spool", "check").returncode == 0

    stamps = sorted(t for t, _ in points(influxdb, "live"))
    cut = stamps[1234]
    since = edge(config, "spool", "export", "--output", "cloud", "--since", rfc3339(cut))
    until = edge(config, "spool", "export", "--output", "cloud", "--until", rfc3339(cut))
    assert len(since.stdout.splitlines()) == total - 1234
    assert len(until.stdout.splitlines()) == 1234
    assert sorted(since.stdout.splitlines() + until.stdout.splitlines()) == sorted(
        lines.splitlines()
    )
    assert f"{1234} lines outside --since/--until were left out" in since.stderr

    # -- a damaged copy ---------------------------------------------------------------------------
    damaged, spool = copy_of(agent, tmp_path, "damaged")
    cid = sqlite3.connect(spool).execute("SELECT max(id) FROM chunks").fetchone()[0]
    flip_a_body_byte(spool, cid)
    code, checked = edge_json(damaged, "spool", "check")
    assert code == 1
    (problem,) = checked["problems"]
    assert problem.startswith(f"chunks: chunk {cid} (raw): "), problem
    assert "CRC-32" in problem or "does not decode" in problem

    moved, spool = copy_of(agent, tmp_path, "moved")
    db = sqlite3.connect(spool)
    with db:
        db.execute("UPDATE cursors SET chunk = chunk + 1000 WHERE consumer = 'cloud'")
    db.close()
    done = edge(moved, "spool", "check")
    assert done.returncode == 1
    assert "PROBLEM: cursors: cursor cloud/raw points to chunk" in done.stdout
    assert f"past the newest chunk ever written ({cid})" in done.stdout

    # -- skip what went onto the stick -----------------------------------------------------------
    with (tmp_path / "usb2.lp").open("w") as out:
        done = edge(config, "spool", "export", "--output", "cloud", "--advance", stdout=out)
    assert done.returncode == 0, done.stderr
    assert "cursor moved past these lines" in done.stderr
    assert (tmp_path / "usb2.lp").read_text() == lines
    agent.start()
    code, after = edge_json(config, "status")
    assert [o["lines"] for o in after["outputs"]] == [0, 0]
    assert code == 0, after["problems"]
    print(f"status beside a running agent: {status_seconds:.2f}s")
