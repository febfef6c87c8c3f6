"""The Raspberry Pi check (tests/lab/pi.py) in the suite: edge-agent installed from this
checkout's wheel into a Debian arm64 userland and run under qemu-user emulation, against arm64
mosquitto and the host's InfluxDB. ``scripts/dev test`` registers qemu with binfmt_misc; the
rootfs and its venv are built on first use and cached under .cache/rootfs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lab import pi

from agent.tools.localservers import InfluxDB1

pytestmark = [pytest.mark.arm64, pytest.mark.e2e]


def _steps(run: Callable[[pi.Steps], None]) -> pi.Steps:
    steps = pi.Steps()
    with contextlib.suppress(pi.Aborted):
        run(steps)
    return steps


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pi.Box]:
    """One arm64 container for the module, with the wheel of this checkout installed."""
    steps = pi.Steps()
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(pi.Aborted):
            b = pi.started(steps, stack, tmp_path_factory.mktemp("pi"))
        if not steps.passed:
            pytest.fail("\n" + steps.summary(), pytrace=False)
        yield b


def test_check_config_accepts_the_shipped_and_the_pi_config(box: pi.Box) -> None:
    steps = _steps(lambda s: pi.check_config(s, box))
    assert steps.passed, "\n" + steps.summary()


def test_arm64_agent_holds_then_delivers_every_reading_once_and_stops_cleanly(
    box: pi.Box, influxdb: InfluxDB1, tmp_path: Path
) -> None:
    steps = _steps(lambda s: pi.end_to_end(s, box, influxdb, tmp_path, pi.READINGS))
    assert steps.passed, "\n" + steps.summary()


def test_platform_sensitive_unit_tests_pass_on_arm64(box: pi.Box) -> None:
    steps = _steps(lambda s: pi.unit_tests(s, box))
    assert steps.passed, "\n" + steps.summary()
