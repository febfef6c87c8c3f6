"""A real full disk: the agent's data_dir is a small tmpfs that the test fills to the last byte
while a steady stream flows (needs root, as CI runs; see LAB.md). The free-disk floor is off, so
SQLite itself meets ENOSPC: intake must pause with nothing acknowledged, the outputs keep draining,
no cursor freezes, nothing crashes, and once space is freed everything resumes by itself with an
exact count."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import output_toml
from conftest import AgentFactory
from test_e2e import influx_values, publish, wait_until

from agent.tools.localservers import InfluxDB1, Mosquitto

pytestmark = pytest.mark.e2e

N = 6_000
RATE = 300.0  # a steady stream: 20 s of it


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (CI runs as root)", pytrace=False)
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem says ENOSPC."""
    filler = disk / "filler"
    with filler.open("wb") as fh:
        block = b"\0" * 65536
        try:
            while True:
                fh.write(block)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with contextlib.suppress(OSError), filler.open("ab") as fh:  # the last few hundred bytes
        while True:
            fh.write(b"\0")
            fh.flush()
    return filler


def test_a_full_disk_pauses_intake_keeps_draining_and_resumes_exactly(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    """The disk fills during an outage, when the spool is growing. SQLite reuses the pages of
    delivered chunks, so once the server is back and the outputs drain, intake resumes even
    before a byte of the disk is freed."""
    influxdb.create_database("plants")
    agent = make_agent(
        mosquitto.url,
        output_toml("cloud", influxdb.url, "v1", flush_interval="0.1s", retry_max_backoff="1s"),
        extra='[spool]\nmin_free_disk = "0"\n',
    )
    with tmpfs(agent.workdir / "data", "16m") as disk:
        agent.start()
        done = threading.Event()
        publisher = threading.Thread(
            target=publish, args=(mosquitto.url, N, RATE, done, "publisher"), daemon=True
        )
        publisher.start()
        wait_until(lambda: influxdb.count("plants", "temperature") >= 300, 20, "a stream", agent)
        influxdb.stop()  # an outage: the spool grows
        wait_until(lambda: agent.metric("edge_spool_lines") >= 600, 20, "a backlog", agent)
        filler = fill(disk)
        wait_until(lambda: agent.metric("edge_intake_blocked") == 1, 20, "intake paused", agent)
        stuck = agent.metric("edge_readings_committed_total")
        time.sleep(3)
        assert agent.metric("edge_intake_blocked") == 1, "intake must stay paused"
        assert agent.metric("edge_readings_committed_total") == stuck, "nothing is committed"
        assert "spool" in agent.readyz()[1]["problems"]
        assert agent.proc is not None and agent.proc.poll() is None
        influxdb.start()  # the outputs drain from a disk that is still full
        wait_until(lambda: agent.metric("edge_intake_blocked") == 0, 60, "intake resumed", agent)
        filler.unlink()
        publisher.join(timeout=120)
        assert done.is_set()
        wait_until(lambda: influxdb.count("plants", "temperature") >= N, 60, "every reading", agent)
        wait_until(lambda: agent.metric("edge_output_backlog_lines") == 0, 20, "no backlog", agent)
        values = sorted(int(v) for _, v in influx_values(influxdb))
        assert values == list(range(N)), "a reading is missing or stored twice"
        assert agent.metric("edge_readings_dropped_total") == 0
        assert agent.stop() == 0
