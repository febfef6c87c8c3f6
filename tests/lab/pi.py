"""The Raspberry Pi check: edge-agent on Debian arm64 (the userland of Raspberry Pi OS 64-bit),
run here under qemu-user emulation. A correctness check, not a speed figure: emulated Python is
about ten times slower than native.

What it does, each step timed:

1. a cached arm64 bookworm rootfs (debootstrap, with Debian's arm64 python3 and mosquitto), and
   a cached copy of it with a venv holding the package's dependencies as aarch64 wheels from the
   index (keyed on the dependencies in pyproject.toml);
2. a throw-away copy of that, in a container (systemd-nspawn, sharing the host's network), where
   the wheel built from this checkout is installed;
3. ``edge-agent check-config`` on the shipped example and on the Raspberry Pi config below;
4. end to end: the arm64 mosquitto with the shipped ``config/mosquitto.conf``, the arm64 agent
   with the SD-card settings (a commit a second, ``receive_maximum`` 4000), an InfluxDB 1.x
   native to the host; the arm64 simulator publishes a known number of readings and exactly
   that many arrive, raw and counted by the 10-second aggregates; the agent's peak RSS under
   emulation (VmHWM, qemu's translator included); SIGTERM and a clean exit;
5. the platform-sensitive unit tests (sqlite spool, deflate chunks, line protocol, windows,
   clock) under arm64 against the installed wheel.

``scripts/dev pi-check`` runs it and prints a summary; tests/test_pi_arm64.py runs the same
steps in the suite. As a script: ``PYTHONPATH=tests python -m lab.pi [--readings N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agentproc import scrape_metrics

from agent.tools.localservers import InfluxDB1, free_port, port_accepts
from agent.tools.simulate import MEASUREMENTS
from lab import install as install_lab
from lab import machine, rootfs

REPO = rootfs.ROOT
PACKAGES = ("python3", "python3-venv", "ca-certificates", "mosquitto")
VENV = "/opt/edge-agent"
# The test tools the unit tests need inside; the rest of the test extra (ruff, mypy) is not run
# there.
TEST_TOOLS = ("pytest", "pytest-asyncio", "hypothesis")
UNIT_TESTS = (
    "test_spool.py",
    "test_budget.py",
    "test_deflate.py",
    "test_lineprotocol.py",
    "test_payload.py",
    "test_topic.py",
    "test_windows.py",
    "test_redelivery.py",
    "test_clock.py",
    "test_clock_trust.py",
)
READINGS = 2_000
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
}
PI_CONFIG = """\
[agent]
name = "pi"
data_dir = "/var/lib/edge-agent"
log_format = "json"
shutdown_grace = "10s"
[agent.tags]
plant = "p001"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "edge-agent-pi"
receive_maximum = 4000

[[mqtt.subscriptions]]
topic = "plant/{{line}}/sensor/{{sensor}}/{{measurement}}"
format = "value"
qos = 1

[[outputs]]
name = "central"
url = "http://127.0.0.1:{influx_port}"
api = "v1"
database = "plants"
streams = ["raw"]

[[outputs]]
name = "dashboards"
url = "http://127.0.0.1:{influx_port}"
api = "v1"
database = "plants_10s"
streams = ["aggregates"]

[[aggregations]]
every = "10s"
lateness = "2s"
functions = ["mean", "min", "max", "count"]

[spool]
commit_interval = "1s"

[status]
listen = "127.0.0.1:{status_port}"
"""


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


class Aborted(Exception):
    """A step failed; the steps after it cannot run."""


class Steps(list[Step]):
    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Time the block and record it; what it appends to the yielded list is the detail. A
        failure is recorded with its message and ends the run of steps (``Aborted``)."""
        began = time.monotonic()
        detail: list[str] = []
        try:
            yield detail
        except Exception as exc:
            self.append(Step(name, False, time.monotonic() - began, str(exc).strip()))
            raise Aborted(name) from exc
        self.append(Step(name, True, time.monotonic() - began, "; ".join(detail)))

    @property
    def passed(self) -> bool:
        return bool(self) and all(s.ok for s in self)

    def summary(self) -> str:
        lines = []
        for s in self:
            mark = "PASS" if s.ok else "FAIL"
            lines.append(f"[pi] {mark} {s.seconds:7.1f} s  {s.name}")
            lines.extend(f"[pi]                 {line}" for line in s.detail.splitlines())
        total = sum(s.seconds for s in self)
        lines.append(f"[pi] {'PASS' if self.passed else 'FAIL'} ({total:.0f} s in all)")
        return "\n".join(lines)


# --- the rootfs and its venv ------------------------------------------------------------------
def requirements() -> list[str]:
    """The package's dependencies and the test tools, as pyproject.toml pins them."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    tools = [
        r
        for r in project["optional-dependencies"]["test"]
        if re.split(r"[<>=!~; \[]", r, maxsplit=1)[0] in TEST_TOOLS
    ]
    return [*project["dependencies"], *tools]


def _make_venv(root: Path) -> None:
    script = f'python3 -m venv {VENV} && {VENV}/bin/pip install -q "$@"'
    made = subprocess.run(
        [*nspawn(root), "/bin/sh", "-euc", script, "sh", *requirements()],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    _check(made, "venv and pip install in the arm64 rootfs")


def prepared(steps: Steps) -> Path:
    """The arm64 rootfs with the venv of dependencies, each built once and cached (a step
    that took no time reused its cache)."""
    with steps.step("arm64 bookworm rootfs (debootstrap, cached)"):
        base = rootfs.build("arm64", PACKAGES)
    with steps.step("venv with the dependencies as aarch64 wheels (cached)") as note:
        made = rootfs.layer(base, "venv", "\n".join(requirements()), _make_venv)
        note.append(made.name)
    return made


def nspawn(root: Path, *extra: str) -> list[str]:
    """systemd-nspawn for a non-booted container on ``root`` with the host's pip settings."""
    return [
        "systemd-nspawn",
        "--register=no",
        "--keep-unit",
        "-q",
        "--console=pipe",
        "-D",
        str(root),
        *rootfs.pip_env(),
        *rootfs.pip_binds(),
        *extra,
    ]


# --- the container ----------------------------------------------------------------------------
class Inside:
    """A process started in the container: ``pid`` is the arm64 process as the host sees it
    (nsenter's child), so it can be signalled and measured from here."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
        self.proc = proc
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        deadline = time.monotonic() + timeout
        while not children.read_text().split():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nsenter exited with {proc.returncode} before its command")
            time.sleep(0.01)
        self.pid = int(children.read_text().split()[0])

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmHWM for pid {self.pid}")

    def stop(self, timeout: float) -> int:
        """SIGTERM, then the exit code (nsenter passes it on); SIGKILL if it hangs."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise


class Box:
    """A running arm64 container: commands enter it with nsenter."""

    def __init__(self, root: Path, leader: int) -> None:
        self.root = root
        self.leader = leader

    def _argv(self, argv: Sequence[str], wd: str) -> list[str]:
        # Entering the mount namespace puts the process at the container's root; nsenter's own
        # --wd would resolve the folder on the host's side.
        return ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-C", wd, *argv]

    def run(
        self, *argv: str, timeout: float, env: dict[str, str] | None = None, wd: str = "/"
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._argv(argv, wd),
            env={**ENV, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(self, *argv: str, log: IO[bytes]) -> Inside:
        proc = subprocess.Popen(
            self._argv(argv, "/"),
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            return Inside(proc)
        except RuntimeError:
            proc.kill()
            proc.wait(10)
            raise

    def put(self, path: str, text: str) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


@contextlib.contextmanager
def box(workdir: Path, base: Path, timeout: float = 60) -> Iterator[Box]:
    """A throw-away copy of ``base`` under ``workdir``, running (PID 1 a ``sleep``), with this
    checkout's tests and pyproject.toml bound read-only at /src; killed and removed on exit."""
    with rootfs.copy(base, workdir / "rootfs") as root, (workdir / "nspawn.log").open("wb") as log:
        proc = subprocess.Popen(
            nspawn(
                root,
                f"--machine=edge-agent-pi-{os.getpid()}",
                f"--bind-ro={REPO / 'tests'}:/src/tests",
                f"--bind-ro={REPO / 'pyproject.toml'}:/src/pyproject.toml",
                "/bin/sleep",
                "infinity",
            ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield Box(root, machine.leader(proc, "sleep", timeout))
        finally:
            machine.stop(proc)


# --- the checks -------------------------------------------------------------------------------
def _check(result: subprocess.CompletedProcess[str], what: str) -> str:
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise RuntimeError(f"{what} exited with {result.returncode}:\n{tail}")
    return result.stdout


def install(steps: Steps, b: Box, wheel: Path) -> None:
    with steps.step("install the wheel into the arm64 venv") as note:
        shutil.copy2(wheel, b.root / "root" / wheel.name)
        _check(
            b.run(
                f"{VENV}/bin/pip",
                "install",
                "-q",
                "--no-deps",
                "--force-reinstall",
                f"/root/{wheel.name}",
                timeout=300,
                env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            ),
            "pip install",
        )
        platform_line = _check(b.run(f"{VENV}/bin/python", "-c", _PLATFORM, timeout=60), "python")
        note.append(platform_line.strip())


_PLATFORM = (
    "import platform, sqlite3, zlib; "
    "print(f'{platform.machine()}, Python {platform.python_version()}, '"
    "f'SQLite {sqlite3.sqlite_version}, zlib {zlib.ZLIB_RUNTIME_VERSION}')"
)


CREDENTIALS = "/etc/edge-agent/credentials"  # stands for the unit's $CREDENTIALS_DIRECTORY


def _secret_files(node: object) -> Iterator[str]:
    """The secret files a config names (``token_file``, ``password_file``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("token_file", "password_file") and isinstance(value, str):
                yield value
            else:
                yield from _secret_files(value)
    elif isinstance(node, list):
        for item in node:
            yield from _secret_files(item)


def check_config(steps: Steps, b: Box) -> None:
    with steps.step("edge-agent check-config (shipped example, Raspberry Pi config)") as note:
        shipped = (REPO / "config" / "agent.toml").read_text()
        b.put("/etc/edge-agent/agent.toml", shipped)
        for path in _secret_files(tomllib.loads(shipped)):
            b.put(path.replace("${CREDENTIALS_DIRECTORY}", CREDENTIALS), "secret\n")
        _check(
            b.run(
                f"{VENV}/bin/edge-agent",
                "check-config",
                timeout=120,
                env={"CREDENTIALS_DIRECTORY": CREDENTIALS},
            ),
            "check-config",
        )
        b.put(
            "/etc/edge-agent/pi.toml", PI_CONFIG.format(mqtt_port=1, influx_port=1, status_port=1)
        )
        out = _check(
            b.run(
                f"{VENV}/bin/edge-agent",
                "check-config",
                "--config",
                "/etc/edge-agent/pi.toml",
                timeout=120,
            ),
            "check-config --config pi.toml",
        )
        effective = json.loads(out)
        spool, mqtt = effective["spool"], effective["mqtt"]
        note.append(
            f"pi.toml: spool.commit_interval {spool['commit_interval']} s, "
            f"mqtt.receive_maximum {mqtt['receive_maximum']}"
        )


def _metrics(port: int) -> dict[str, float]:
    """The agent's metrics, each series by its full name (``edge_spool_lines{stream="raw"}``)
    and each metric summed over its labels (``edge_spool_lines``)."""
    out = scrape_metrics(port, timeout=5)
    for key, value in list(out.items()):
        if "{" in key:
            name = key.split("{")[0]
            out[name] = out.get(name, 0.0) + value
    return out


def _counted(influx: InfluxDB1) -> tuple[int, int]:
    """Raw points in InfluxDB, and the readings their 10-second aggregates counted."""
    raw = sum(influx.count("plants", m) for m in MEASUREMENTS)
    counted = 0
    for m in MEASUREMENTS:
        res = influx.query("plants_10s", f'SELECT sum("value_count") FROM "{m}"')
        series = res["results"][0].get("series")
        counted += int(series[0]["values"][0][1]) if series else 0
    return raw, counted


def _wait(what: str, ready: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise TimeoutError(f"{what}: not within {timeout:.0f} s{tail}")


def _log_records(log: Path) -> list[dict[str, object]]:
    """The agent's JSON log lines (what is not JSON, a traceback say, is left out)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


def end_to_end(steps: Steps, b: Box, influx: InfluxDB1, workdir: Path, readings: int) -> None:
    """arm64 mosquitto and agent, InfluxDB on the host. The agent starts while InfluxDB is down,
    as a Pi without an RTC boots before its link is up: with no NTP either, nothing can confirm
    its clock, so ``readings`` are held in the spool. InfluxDB comes up, its ``Date`` confirms
    the clock, and exactly ``readings`` arrive, raw and counted by the aggregates. Then a clean
    SIGTERM."""
    for db in ("plants", "plants_10s"):
        influx.create_database(db)
    influx.stop()
    mqtt_port, status_port = free_port(), free_port()
    broker_log, agent_log = workdir / "mosquitto.log", workdir / "agent.log"
    with contextlib.ExitStack() as stack:
        with steps.step("arm64 mosquitto with config/mosquitto.conf") as note:
            conf = (REPO / "config" / "mosquitto.conf").read_text()
            conf = conf.replace("listener 1883", f"listener {mqtt_port} 127.0.0.1")
            b.put("/etc/mosquitto/pi-check.conf", conf + "log_dest stdout\n")
            broker = b.spawn(
                "/usr/sbin/mosquitto",
                "-c",
                "/etc/mosquitto/pi-check.conf",
                log=stack.enter_context(broker_log.open("wb")),
            )
            stack.callback(broker.stop, 30)
            _wait("mosquitto listening", lambda: port_accepts(mqtt_port), 60, broker_log)
            note.append(f"port {mqtt_port}")

        with steps.step("arm64 agent started and subscribed, InfluxDB down") as note:
            b.put(
                "/etc/edge-agent/pi.toml",
                PI_CONFIG.format(
                    mqtt_port=mqtt_port, influx_port=influx.port, status_port=status_port
                ),
            )
            agent = b.spawn(
                f"{VENV}/bin/edge-agent",
                "run",
                "--config",
                "/etc/edge-agent/pi.toml",
                log=stack.enter_context(agent_log.open("wb")),
            )
            stack.callback(agent.stop, 30)
            _wait(
                "agent connected",
                lambda: _metrics(status_port).get("edge_mqtt_connected") == 1,
                120,
                agent_log,
            )
            kernel_trusted = _metrics(status_port).get("edge_clock_trusted") == 1
            note.append(
                "the kernel reports the clock NTP-synchronised: trusted at once"
                if kernel_trusted
                else "edge_clock_trusted 0: not confirmed by NTP or by a server's clock"
            )

        with steps.step(f"arm64 simulator publishes {readings:,} readings (QoS 1)") as note:
            began = time.monotonic()
            out = _check(
                b.run(
                    f"{VENV}/bin/edge-agent",
                    "simulate",
                    "--url",
                    f"mqtt://127.0.0.1:{mqtt_port}",
                    "--count",
                    str(readings),
                    "--rate",
                    "0",
                    timeout=600,
                ),
                "edge-agent simulate",
            )
            summary = json.loads(out)
            if summary["published"] != readings or summary["acknowledged"] != readings:
                raise RuntimeError(f"the simulator reports {summary}")
            note.append(f"{readings / (time.monotonic() - began):,.0f} msg/s, start included")

        if not kernel_trusted:
            with steps.step("held in the spool while the clock is unconfirmed") as note:
                held = 'edge_spool_lines{stream="held"}'
                _wait(
                    f"{readings:,} readings held",
                    lambda: _metrics(status_port).get(held) == readings,
                    120,
                    agent_log,
                )
                note.append(f"{held} {readings:,}, edge_clock_trusted 0")

        with steps.step("InfluxDB up: exactly that many arrive, raw and aggregated") as note:
            influx.start()
            _wait("every reading in InfluxDB", lambda: min(_counted(influx)) >= readings, 300)
            raw, counted = _counted(influx)
            if (raw, counted) != (readings, readings):
                raise RuntimeError(f"{raw:,} raw points, {counted:,} counted by the aggregates")
            metrics = _metrics(status_port)
            trusted = [r for r in _log_records(agent_log) if r.get("event") == "clock_trusted"]
            by = trusted[0].get("confirmed_by") if trusted else "(no clock_trusted event)"
            note.append(f"{raw:,} raw points, {counted:,} counted by the 10 s aggregates")
            note.append(
                f"clock confirmed by {by}; edge_clock_held_placed_total "
                f"{metrics.get('edge_clock_held_placed_total', 0):,.0f}; "
                f"edge_readings_dropped_total {metrics.get('edge_readings_dropped_total', 0):.0f}"
            )

        with steps.step("agent peak RSS under qemu (VmHWM)") as note:
            note.append(f"{agent.peak_rss_mb():.1f} MB (qemu's translator included: no Pi figure)")

        with steps.step("SIGTERM: the agent exits cleanly") as note:
            code = agent.stop(60)
            errors = [
                json.dumps(r)
                for r in _log_records(agent_log)
                if r.get("level") in ("error", "critical")
            ]
            if code != 0 or errors:
                raise RuntimeError(f"exit code {code}; errors logged:\n" + "\n".join(errors))
            note.append("exit code 0, no error logged")


def unit_tests(steps: Steps, b: Box) -> None:
    with steps.step(f"{len(UNIT_TESTS)} unit test modules under arm64") as note:
        out = _check(
            b.run(
                f"{VENV}/bin/python",
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-p",
                "lab.slow_cpu",
                "-o",
                "pythonpath=",  # the installed wheel, not a source tree
                *(f"/src/tests/{name}" for name in UNIT_TESTS),
                timeout=1200,
                env={"PYTHONPATH": "/src/tests", "PYTHONDONTWRITEBYTECODE": "1"},
                wd="/tmp",
            ),
            "pytest under arm64",
        )
        note.append(out.strip().splitlines()[-1].strip("= "))


def started(steps: Steps, stack: contextlib.ExitStack[None], workdir: Path) -> Box:
    """The arm64 container with the wheel of this checkout installed; ``stack`` stops it."""
    base = prepared(steps)
    with steps.step("wheel of this checkout") as note:
        wheel = install_lab.wheel(workdir / "wheel")
        note.append(wheel.name)
    with steps.step("a throw-away copy of it, started (systemd-nspawn)"):
        b = stack.enter_context(box(workdir, base))
    install(steps, b, wheel)
    return b


def run_all(workdir: Path, readings: int = READINGS) -> Steps:
    steps = Steps()
    with contextlib.suppress(Aborted), contextlib.ExitStack() as stack:
        b = started(steps, stack, workdir)
        check_config(steps, b)
        with InfluxDB1(workdir / "influxdb") as influx:
            end_to_end(steps, b, influx, workdir, readings)
        unit_tests(steps, b)
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=READINGS)
    parser.add_argument("--keep", action="store_true", help="keep the logs (not the rootfs copy)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-pi-"))
    try:
        steps = run_all(workdir, args.readings)
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
    print(steps.summary())
    if args.keep:
        print(f"[pi] logs in {workdir}")
    return 0 if steps.passed else 1


if __name__ == "__main__":
    sys.exit(main())
