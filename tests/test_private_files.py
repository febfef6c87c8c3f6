"""The data dir holds the plant's readings and raw payloads: only the agent's user may read it,
whatever umask the agent was started with and whatever an older version left there."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from agentproc import output_toml
from conftest import AgentFactory
from paho.mqtt.enums import CallbackAPIVersion

from agent.daemon import make_private
from agent.tools.localservers import Mosquitto


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_make_private_tightens_dirs_and_files_not_link_targets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "dead-letters").mkdir(parents=True, mode=0o755)
    data.chmod(0o755)
    (data / "spool.db").write_text("")
    (data / "spool.db").chmod(0o644)
    (data / "dead-letters" / "ingest.jsonl").write_text("")
    (data / "dead-letters" / "ingest.jsonl").chmod(0o640)
    outside = tmp_path / "outside.txt"
    outside.write_text("")
    outside.chmod(0o644)
    (data / "link").symlink_to(outside)
    make_private(data)
    assert mode(data) == 0o700 and mode(data / "dead-letters") == 0o700
    assert mode(data / "spool.db") == 0o600
    assert mode(data / "dead-letters" / "ingest.jsonl") == 0o600
    assert mode(outside) == 0o644


@pytest.mark.e2e
def test_files_of_a_real_run_are_private(
    tmp_path: Path, mosquitto: Mosquitto, make_agent: AgentFactory
) -> None:
    data = tmp_path / "agent" / "data"
    data.mkdir(parents=True, mode=0o755)
    data.chmod(0o755)
    agent = make_agent(mosquitto.url, output_toml("cloud", "http://127.0.0.1:9", "v1"))
    saved = os.umask(0o022)
    try:
        agent.start()
    finally:
        os.umask(saved)
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="publisher")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    pub.publish("plant/line-1/sensor/s1/temperature", "21.5", qos=1).wait_for_publish(5)
    pub.publish("plant/line-1/sensor/s1/temperature", b"", qos=1).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()
    deadline = time.monotonic() + 20
    while agent.metric('edge_readings_dropped_total{reason="malformed"}') < 1:
        assert time.monotonic() < deadline, agent.log_tail()
        time.sleep(0.1)
    dead = data / "dead-letters"
    files = [data / f for f in ("spool.db", "spool.db-wal", "spool.db-shm", "agent.lock")]
    assert {path.name: oct(mode(path)) for path in [*files, dead / "ingest.jsonl"]} == {
        name: "0o600" for name in [f.name for f in files] + ["ingest.jsonl"]
    }
    assert (oct(mode(data)), oct(mode(dead))) == ("0o700", "0o700")
    assert agent.stop() == 0
