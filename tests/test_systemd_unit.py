"""The unit we ship, checked without a running systemd: `systemd-analyze verify` finds nothing
to say, `systemd-analyze security` rates its exposure at most 2.0, and its settings agree with
the agent's own defaults (config path, data dir, shutdown grace, credential names)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import DEFAULT_CONFIG
from agent.config import AgentSection
from agent.units import parse_duration

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge-agent.service"
INSTALLED = "/opt/edge-agent/bin/edge-agent"
MAX_EXPOSURE = 2.0


def settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat)."""
    found = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def values(key: str) -> list[str]:
    return [v for _, k, v in settings(UNIT.read_text()) if k == key]


def value(key: str) -> str:
    (only,) = values(key)
    return only


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart on this checkout's edge-agent: verify checks that the binary
    exists, and /opt/edge-agent is only there on a gateway."""
    exe = Path(sys.executable).parent / "edge-agent"
    assert exe.exists(), "the test venv has no edge-agent script: pip install -e ."
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED, str(exe)))
    return copy


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing: run `scripts/dev test`", pytrace=False)
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=120, check=False, cwd="/"
    )


def test_verify_is_silent(unit_copy: Path) -> None:
    """verify exits 0 on unknown keys and bad values: only its silence means a clean unit."""
    done = _analyze("verify", str(unit_copy))
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr


def test_verify_would_speak_up(tmp_path: Path, unit_copy: Path) -> None:
    """The check above can fail: a misplaced key is reported."""
    broken = tmp_path / "broken" / UNIT.name
    broken.parent.mkdir()
    broken.write_text(unit_copy.read_text().replace("[Service]", "[Service]\nRestartSecs=1"))
    assert "Unknown key" in _analyze("verify", str(broken)).stderr


def test_exposure_is_low(unit_copy: Path) -> None:
    done = _analyze("security", "--offline=true", "--no-pager", str(unit_copy))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, done.stdout


def test_runs_as_installed_and_documented() -> None:
    assert value("ExecStart") == f"{INSTALLED} run --config {DEFAULT_CONFIG}"
    assert value("Type") == "notify" and value("NotifyAccess") == "main"
    assert value("DynamicUser") == "yes"
    assert Path("/var/lib", value("StateDirectory")) == AgentSection().data_dir
    assert value("StateDirectoryMode") == "0700" and value("UMask") == "0077"
    assert Path("/etc", value("ConfigurationDirectory")) == DEFAULT_CONFIG.parent


def test_timeouts_leave_room_for_the_agent() -> None:
    grace = AgentSection().shutdown_grace
    assert parse_duration(value("TimeoutStopSec")) >= grace + 10  # then the spool is closed
    watchdog = parse_duration(value("WatchdogSec"))
    assert 10 <= watchdog <= 120
    assert value("Restart") == "always" and parse_duration(value("RestartSec")) >= 1


def test_credentials_match_the_example_config() -> None:
    """Every ${CREDENTIALS_DIRECTORY}/NAME in config/agent.toml (commented examples included)
    is a credential the unit loads."""
    example = (ROOT / "config" / "agent.toml").read_text()
    used = set(re.findall(r"\$\{?CREDENTIALS_DIRECTORY\}?/([\w.-]+)", example))
    assert used, "the example config names no credential"
    assert used <= set(values("LoadCredential"))


def test_kernel_clock_state_stays_readable() -> None:
    """agent/clock/kernel.py reads adjtimex (glibc: clock_adjtime); ProtectClock would refuse
    it, and the @privileged deny list takes it away unless it is allowed back afterwards."""
    assert value("ProtectClock") == "no"
    filters = values("SystemCallFilter")
    last_deny = max(i for i, f in enumerate(filters) if f.startswith("~"))
    allowed_after = " ".join(filters[last_deny + 1 :]).split()
    assert {"adjtimex", "clock_adjtime"} <= set(allowed_after)
