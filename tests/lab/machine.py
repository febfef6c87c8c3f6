"""A Debian machine booted with systemd in a container (systemd-nspawn), for the tests that need
the real service manager: the unit, the watchdog, credentials, the Ansible role.

The container shares the host's network (loopback included), so the agent inside reaches the
test's mosquitto and InfluxDB on their loopback ports, and the test reaches its status port.
It is driven through ``nsenter`` into the container's namespaces (``systemctl``, ``journalctl``).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from lab import rootfs


class Machine:
    def __init__(self, root: Path, process: subprocess.Popen[bytes], leader: int) -> None:
        self.root = root
        self.process = process
        self.leader = leader

    def run(
        self, *argv: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the machine, as root, in all its namespaces."""
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *argv],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> str:
        return self.run("/bin/sh", "-euc", script, check=check, timeout=timeout).stdout

    def put(self, src: Path, dest: str) -> Path:
        """Copy a host file or folder into the machine's file system."""
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)
        return target

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.run("systemctl", "--no-pager", *args, check=check).stdout.strip()

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-P", prop, unit)

    def wait_for(self, unit: str, prop: str, value: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = self.show(unit, prop)
            if seen == value:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{unit} {prop}={seen!r}, expected {value!r} within {timeout}s")

    def journal(self, unit: str, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-u", unit, *args).stdout


def leader(nspawn: subprocess.Popen[bytes], comm: str, timeout: float) -> int:
    """The container's PID 1 as the host sees it: nspawn's child once it runs ``comm``
    (``systemd`` when booted, whatever command it was given otherwise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited with {nspawn.returncode}")
        children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children")
        for pid in children.read_text().split() if children.exists() else []:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    return int(pid)
        time.sleep(0.05)
    raise TimeoutError(f"the container's {comm} did not start")


@contextlib.contextmanager
def booted(
    workdir: Path,
    include: Sequence[str] = rootfs.BOOT_PACKAGES,
    binds: Sequence[str] = (),
    timeout: float = 60,
) -> Iterator[Machine]:
    """A fresh copy of the cached rootfs under ``workdir``, booted; powered off and removed on
    exit. ``binds``: extra ``--bind``/``--bind-ro`` arguments."""
    base = rootfs.build("amd64", include)
    with rootfs.copy(base, workdir / "machine") as root:
        console = (workdir / "console.log").open("wb")
        nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--register=no",
                "--keep-unit",
                "-q",
                "-D",
                str(root),
                "-b",
                "--console=pipe",
                # A real machine lets any process read the kernel's clock state (adjtimex with
                # modes 0, which glibc makes a clock_adjtime call; agent/clock/kernel.py), but
                # nspawn refuses the whole @clock group to a container without CAP_SYS_TIME.
                # Setting the clock still needs that capability, which the container lacks.
                "--system-call-filter=adjtimex clock_adjtime clock_adjtime64",
                *rootfs.pip_env(),
                *rootfs.pip_binds(),
                *binds,
            ],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
        )
        try:
            machine = Machine(root, nspawn, leader(nspawn, "systemd", timeout))
            _wait_running(machine, timeout)
            yield machine
        finally:
            stop(nspawn)
            console.close()


def _wait_running(machine: Machine, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = machine.run("systemctl", "is-system-running", check=False).stdout.strip()
        if state in {"running", "degraded"}:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the container did not finish booting (state {state!r})")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it hangs. A booted container's nspawn powers it off in order, an
    unbooted one's kills everything in it; dockerd stops its containers and its containerd."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
