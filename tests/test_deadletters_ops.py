"""``edge-agent dead-letters list|replay`` on dead letters a real agent made against a real
InfluxDB: lines refused for a field type conflict, listed, replayed once the measurement is
dropped, replayed again; a replay killed half way; replays beside a writer appending."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from agentproc import AgentProcess, output_toml
from conftest import AgentFactory

from agent.config import OutputSection
from agent.deadletter import DeadLetters, line_record
from agent.ops.deadletters import Replay
from agent.tools.localservers import InfluxDB1, Mosquitto
from agent.tools.simulate import Publisher

pytestmark = pytest.mark.e2e

CONFLICTING = 60
FINE = 40
T0 = 1_700_000_000_000_000_000
REPLAY = [sys.executable, "-m", "agent", "dead-letters", "replay", "--output", "cloud"]


def cli(config: Path, *args: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(config), "--json"],
        capture_output=True,
        timeout=timeout,
    )
    return done.returncode, json.loads(done.stdout or b"{}")


def wait_for(check: Any, what: str, agent: AgentProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{agent.log_tail()}"
        time.sleep(0.2)


def test_refused_lines_listed_replayed_after_the_fix_and_once_only(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    influxdb.create_database("plants")
    # "value" on temperature is a string already: the agent's floats conflict with it.
    influxdb.write(
        "plants", f'temperature,line=l0,sensor=s0,plant=p001 value="text" {time.time_ns()}'
    )
    agent = make_agent(
        mosquitto.url, output_toml("cloud", influxdb.url, "v1", flush_interval="0.1s")
    )
    agent.start()
    pub = Publisher(mosquitto.url, "pub", qos=1)
    for i in range(CONFLICTING):
        pub.publish(f"plant/l{i % 2}/sensor/s{i % 3}/temperature", str(i))
    for i in range(FINE):
        pub.publish(f"plant/l{i % 2}/sensor/s{i % 3}/humidity", str(i))
    assert pub.wait_acked(CONFLICTING + FINE, timeout=30)
    pub.close()
    wait_for(
        lambda: (
            agent.metric("edge_output_dead_letters_total") >= CONFLICTING
            and influxdb.count("plants", "humidity") == FINE
        ),
        "the conflicting lines to be dead letters",
        agent,
    )

    code, listed = cli(agent.config, "dead-letters", "list")
    assert code == 1 and listed["count"] == CONFLICTING
    (source,) = listed["sources"]
    assert source["source"] == "output cloud"
    (group,) = source["groups"]
    assert group["count"] == CONFLICTING and len(group["records"]) == CONFLICTING
    assert group["reason"].startswith("HTTP 400: partial write: field type conflict")
    assert len(group["samples"]) == 3

    # Not fixed yet: every line is refused again and stays a dead letter, with the new answer.
    code, replayed = cli(agent.config, "dead-letters", "replay", "--output", "cloud")
    assert code == 1, replayed
    assert (replayed["sent"], replayed["refused"]) == (0, CONFLICTING)
    code, listed = cli(agent.config, "dead-letters", "list", "--output", "cloud")
    records = listed["sources"][0]["groups"][0]["records"]
    assert len(records) == CONFLICTING and {r["replays"] for r in records} == {1}

    # The fix: the measurement with the string field goes. The agent still runs meanwhile.
    influxdb.query("plants", "DROP MEASUREMENT temperature")
    code, replayed = cli(agent.config, "dead-letters", "replay", "--output", "cloud")
    assert code == 0, replayed
    assert (replayed["sent"], replayed["refused"]) == (CONFLICTING, 0)
    assert influxdb.count("plants", "temperature") == CONFLICTING
    values = sorted(r["value"] for r in influxdb.rows("plants", "temperature"))
    assert values == [float(i) for i in range(CONFLICTING)]

    code, replayed = cli(agent.config, "dead-letters", "replay", "--output", "cloud")
    assert code == 0 and replayed["sent"] == 0  # nothing resent
    assert influxdb.count("plants", "temperature") == CONFLICTING
    assert influxdb.count("plants", "humidity") == FINE
    code, listed = cli(agent.config, "dead-letters", "list")
    assert code == 0 and listed["count"] == 0
    assert agent.stop() == 0


def _dead_letters(directory: Path, n: int, first: int = 0) -> None:
    DeadLetters(directory / "cloud.jsonl").write(
        [
            line_record(f"m,s=a value={i} {T0 + i}", 400, "refused earlier")
            for i in range(first, first + n)
        ]
    )


def _config(tmp_path: Path, influxdb: InfluxDB1, batch_size: int) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""[agent]
data_dir = "{tmp_path / "data"}"
[mqtt]
url = "mqtt://127.0.0.1:9"
[[mqtt.subscriptions]]
topic = "a/{{x}}"
{output_toml("cloud", influxdb.url, "v1", batch_size=batch_size)}"""
    )
    return config


def test_a_replay_killed_half_way_resumes_without_duplicates(
    tmp_path: Path, influxdb: InfluxDB1
) -> None:
    influxdb.create_database("plants")
    lines = 400
    _dead_letters(tmp_path / "data" / "dead-letters", lines)
    config = _config(tmp_path, influxdb, batch_size=1)
    work = tmp_path / "data" / "dead-letters" / "cloud.replaying"
    replay = subprocess.Popen(
        [*REPLAY, "--config", str(config)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (work / "mark.json").exists():
        assert time.monotonic() < deadline and replay.poll() is None
        time.sleep(0.005)
    replay.send_signal(signal.SIGKILL)
    replay.wait(10)
    sent_before = influxdb.count("plants", "m")
    assert 0 < sent_before < lines, "the replay was not killed half way"
    assert list(work.glob("*.jsonl"))

    code, replayed = cli(config, "dead-letters", "replay", "--output", "cloud", timeout=120)
    assert code == 0 and replayed["refused"] == 0
    # Resumed at the saved offset: at most the one batch in flight went out twice.
    assert lines - sent_before <= replayed["sent"] <= lines - sent_before + 1
    assert influxdb.count("plants", "m") == lines
    assert not list(work.glob("*.jsonl")) and not (work / "mark.json").exists()


async def test_replays_beside_a_writer_appending_and_rotating(
    tmp_path: Path, influxdb: InfluxDB1
) -> None:
    """What the agent appends while replays take its files aside is replayed or still there,
    never lost and never twice, across rotations to .1."""
    influxdb.create_database("plants")
    directory = tmp_path / "dead-letters"
    directory.mkdir()
    total = 1500
    writer = DeadLetters(directory / "cloud.jsonl", max_bytes=20_000)
    cfg = OutputSection.model_validate(
        {"name": "cloud", "url": influxdb.url, "api": "v1", "database": "plants"}
    )
    # Few records per rotation: a .1 is never overwritten before the next replay can take it,
    # because the writer waits for a replay whenever both files are full.
    rotated = writer.rotated

    def append() -> None:
        for first in range(0, total, 10):
            while rotated.exists() and writer.path.stat().st_size > writer.max_bytes:
                time.sleep(0.001)
            writer.write(
                [
                    line_record(f"m,s=a value={i} {T0 + i}", 400, "x" * 50)
                    for i in range(first, first + 10)
                ]
            )
            time.sleep(0.001)

    thread = threading.Thread(target=append)
    thread.start()
    sent = 0
    rotations_seen = 0
    while thread.is_alive():
        rotations_seen += rotated.exists()
        sent += (await Replay(cfg, directory).run()).sent
        await asyncio.sleep(0.05)
    thread.join()
    sent += (await Replay(cfg, directory).run()).sent
    assert rotations_seen > 0, rotations_seen
    assert sent == total
    assert influxdb.count("plants", "m") == total
    assert not writer.path.exists() and not rotated.exists()
