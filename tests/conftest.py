"""Shared fixtures. Real servers per test (DESIGN.md §5), data under the test's tmp_path."""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from agentproc import AgentProcess

from agent.tools.localservers import (
    BinaryMissingError,
    InfluxDB1,
    Mosquitto,
    Server,
    VictoriaMetrics,
)

S = TypeVar("S", bound=Server)


# --- real servers ---------------------------------------------------------------------------
def _run(server: S) -> Iterator[S]:
    """Start, yield, and always stop by PID; a missing binary fails loudly instead of skipping."""
    try:
        server.start()
    except BinaryMissingError as e:
        pytest.fail(str(e), pytrace=False)  # the message says: run `scripts/dev test`
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            server.kill()  # no-op unless stop() raised with the process still around


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    yield from _run(Mosquitto(tmp_path / "mosquitto"))


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[InfluxDB1]:
    yield from _run(InfluxDB1(tmp_path / "influxdb"))


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    yield from _run(VictoriaMetrics(tmp_path / "victoria"))


@pytest.fixture
def libfaketime() -> str:
    """The library that fakes an agent's wall clock (tests/test_clock_steps.py's FakeClock)."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime is missing: run `scripts/dev test`", pytrace=False)
    return found[0]


# --- the agent as a subprocess ----------------------------------------------------------------
AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[AgentFactory]:
    """``make_agent(mqtt_url, outputs, **options)``: an AgentProcess working in tmp_path/agent,
    killed at teardown, pass or fail."""
    made: list[AgentProcess] = []

    def make(mqtt_url: str, outputs: str, **options: str) -> AgentProcess:
        agent = AgentProcess(tmp_path / "agent", mqtt_url, outputs, **options)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(timeout=10)
