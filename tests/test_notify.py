"""systemd's notify protocol against a socket the test holds (the service manager's end):
READY, STATUS, WATCHDOG cadence, STOPPING; no WATCHDOG while the spool's thread is stuck; and
the agent itself, as a subprocess, telling a supervisor all of it."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agentproc import output_toml
from conftest import AgentFactory

from agent.spool.budget import Budget
from agent.spool.store import Spool
from agent.status.notify import MAX_STATUS, Notifier, address, one_line, watchdog_interval
from agent.status.supervisor import OutputState, Supervisor, status_line
from agent.tools.localservers import InfluxDB1, Mosquitto

Message = dict[str, str]


class Manager:
    """The service manager's end of $NOTIFY_SOCKET: a datagram socket that records what came."""

    def __init__(self, name: str) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(address(name))
        self.socket.settimeout(0.05)
        self.name = name
        self.received: list[tuple[float, Message]] = []
        self._read = 0  # messages wait_for has gone past

    def collect(self, seconds: float) -> list[tuple[float, Message]]:
        """Everything that arrives within ``seconds``, stamped on arrival."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.socket.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            self.received.append((time.monotonic(), fields))
        return self.received

    def wait_for(self, key: str, timeout: float) -> Message:
        """The next message (after the last one this returned) that sets ``key``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index in range(self._read, len(self.received)):
                if key in self.received[index][1]:
                    self._read = index + 1
                    return self.received[index][1]
            self._read = len(self.received)
            self.collect(0.1)
        raise AssertionError(f"no {key} within {timeout}s; got {self.received}")

    def pings(self) -> list[float]:
        return [t for t, fields in self.received if fields.get("WATCHDOG") == "1"]


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Manager]:
    """A socket in the file system, and one in Linux's abstract namespace ('@name')."""
    name = (
        str(tmp_path / "notify") if request.param == "path" else f"@edge-agent-test-{os.getpid()}"
    )
    mgr = Manager(name)
    yield mgr
    mgr.socket.close()


def test_address_forms() -> None:
    assert address("/run/systemd/notify") == "/run/systemd/notify"
    assert address("@abstract/name") == "\0abstract/name"
    assert address("") is None
    assert address("@") is None
    assert address("vsock:2:1234") is None  # not spoken here: nothing is sent


def test_watchdog_interval_is_half_the_timeout_and_only_for_us() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({}, 42) is None


def test_status_is_one_short_line() -> None:
    assert one_line("a\nb\n  c") == "a b c"
    assert len(one_line("x" * 1000)) == MAX_STATUS
    line = status_line(True, [OutputState("cloud", 0, True), OutputState("site", 12, False)])
    assert line == "mqtt connected; cloud: backlog 0, healthy; site: backlog 12, failing"
    assert status_line(False, [], intake_blocked=True, held=3) == (
        "mqtt disconnected; intake blocked by the spool; clock untrusted, 3 held"
    )


def test_nothing_is_sent_without_notify_socket() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert not notifier.send(READY="1")


def test_ready_status_stopping(manager: Manager) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": manager.name})
    notifier.ready("starting")
    notifier.status("mqtt connected")
    notifier.status("mqtt connected")  # the same line is not sent again
    notifier.status("line one\nline two")
    notifier.stopping("stopping")
    notifier.close()
    got = [fields for _, fields in manager.collect(0.3)]
    assert got == [
        {"READY": "1", "STATUS": "starting"},
        {"STATUS": "mqtt connected"},
        {"STATUS": "line one line two"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]


def test_a_manager_gone_away_costs_nothing(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert notifier.enabled and not notifier.send(READY="1")


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    budget = Budget(max_size=1 << 30, max_age=86400, min_free_disk=0, when_full="drop_oldest")
    opened = Spool(tmp_path / "spool.db", budget, "full")
    await opened.open()
    yield opened
    await opened.close()


async def _supervise(
    manager: Manager, spool: Spool, seconds: float, wedge: threading.Event | None = None
) -> Supervisor:
    """A supervisor with a 0.4 s watchdog (pings every 0.2 s) running ``seconds``; ``wedge``
    (if given) is set-able by the test to free a spool thread it blocked."""
    notifier = Notifier({"NOTIFY_SOCKET": manager.name, "WATCHDOG_USEC": "400000"})
    assert notifier.watchdog_interval == pytest.approx(0.2)
    lines = iter(f"status {i}" for i in range(1000))
    supervisor = Supervisor(notifier, spool.probe, lambda: next(lines), status_every=0.25)
    stop = asyncio.Event()
    task = asyncio.create_task(supervisor.run(stop))
    collector = asyncio.create_task(asyncio.to_thread(manager.collect, seconds))
    await asyncio.sleep(seconds)
    stop.set()
    if wedge is not None:
        wedge.set()
    await asyncio.wait_for(task, 5)
    await collector
    return supervisor


async def test_watchdog_pings_at_half_the_timeout(manager: Manager, spool: Spool) -> None:
    await _supervise(manager, spool, 2.0)
    pings = manager.pings()
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert 7 <= len(pings) <= 10, pings  # 2 s / 0.2 s, give or take a busy machine
    assert all(0.15 < gap < 0.4 for gap in gaps), gaps
    statuses = [f["STATUS"] for _, f in manager.received if "STATUS" in f]
    assert statuses[:3] == ["status 0", "status 1", "status 2"]


async def test_no_watchdog_while_the_spool_thread_is_stuck(manager: Manager, spool: Spool) -> None:
    """A job that never returns blocks the spool's one thread: the pings stop (systemd would
    kill the agent) while the event loop itself runs on; once the thread moves they resume."""
    wedge = threading.Event()
    stuck = asyncio.ensure_future(spool.database.run(wedge.wait, 10.0))
    run = asyncio.create_task(_supervise(manager, spool, 1.2, wedge))
    await asyncio.sleep(1.2)
    assert manager.pings() == [] and not stuck.done()
    wedge.set()
    await stuck
    await run
    statuses = [f for _, f in manager.received if "STATUS" in f]
    assert len(statuses) >= 3  # the loop ran: only the thread was stuck


async def test_pings_resume_when_the_spool_thread_moves_again(
    manager: Manager, spool: Spool
) -> None:
    wedge = threading.Event()
    stuck = asyncio.ensure_future(spool.database.run(wedge.wait, 10.0))
    asyncio.get_running_loop().call_later(0.7, wedge.set)
    began = time.monotonic()
    await _supervise(manager, spool, 2.0)
    await stuck
    pings = manager.pings()
    assert pings and pings[0] - began > 0.6, pings  # none while stuck
    assert len(pings) >= 4, pings  # then every 0.2 s


@pytest.mark.e2e
def test_the_agent_tells_its_supervisor(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    """The real agent, as systemd would run it: READY once the stages run, a STATUS line that
    follows the broker connection, WATCHDOG pings, STOPPING on SIGTERM."""
    influxdb.create_database("plants")
    manager = Manager(str(tmp_path / "notify"))
    agent = make_agent(mosquitto.url, output_toml("cloud", influxdb.url, "v1"))
    agent.env = {"NOTIFY_SOCKET": manager.name, "WATCHDOG_USEC": "1000000"}
    agent.start()
    ready = manager.wait_for("READY", 10)
    assert "cloud: backlog 0, healthy" in ready["STATUS"]
    status = ready["STATUS"]
    while not status.startswith("mqtt connected"):
        status = manager.wait_for("STATUS", 10)["STATUS"]
    assert status.startswith("mqtt connected; cloud: backlog 0, healthy")
    manager.collect(2.0)
    assert len(manager.pings()) >= 3  # every 0.5 s
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGTERM)
    stopping = manager.wait_for("STOPPING", 10)
    assert stopping["STATUS"].startswith("stopping")
    assert agent.proc.wait(timeout=30) == 0
    manager.socket.close()
