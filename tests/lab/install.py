"""The agent installed into a booted machine the way docs/service.md installs it on a gateway: a
venv at /opt/edge-agent holding the wheel built from this checkout.

pip inside the machine fetches the dependencies from the registry the host reaches (about a
minute). The venv with only the dependencies is then cached under ``.cache/lab`` (keyed by them,
the machine's Python and architecture); later machines get a copy and only the wheel is added,
in seconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from lab.machine import Machine
from lab.rootfs import ROOT

PREFIX = "/opt/edge-agent"
CACHE = ROOT / ".cache" / "lab"


def wheel(dest: Path) -> Path:
    """The edge-agent wheel of this checkout (pip fetches setuptools to build it)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = dest.glob("edge_agent-*.whl")
    return built


def dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps: list[str] = project["dependencies"]
    return deps


def install(machine: Machine, workdir: Path, prefix: str = PREFIX) -> None:
    """A venv at ``prefix`` in the machine with this checkout's wheel and its dependencies."""
    venv = _dependencies_venv(machine, prefix)
    target = machine.root / prefix.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(venv), str(target)], check=True, timeout=300)
    built = wheel(workdir / "wheel")
    # Not /tmp: the booted machine mounts a tmpfs over it, hiding what is put there.
    inside = f"/var/tmp/{built.name}"
    machine.put(built, inside)
    machine.run(f"{prefix}/bin/pip", "install", "-q", "--no-deps", "--no-index", inside)


def _dependencies_venv(machine: Machine, prefix: str) -> Path:
    """The cached venv of the dependencies for this machine, built inside it on first use."""
    python = machine.run(
        "python3", "-c", "import platform, sys; print(sys.version, platform.machine())"
    ).stdout
    key = hashlib.sha256("\n".join([prefix, python, *dependencies()]).encode()).hexdigest()[:12]
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"venv-{key}"
    complete = CACHE / f"venv-{key}.complete"
    with open(CACHE / f"venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete.exists():
            return cached
        shutil.rmtree(cached, ignore_errors=True)
        machine.run("python3", "-m", "venv", prefix)
        machine.run(f"{prefix}/bin/pip", "install", "-q", *dependencies(), timeout=900)
        partial = cached.with_name(cached.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(
            ["cp", "-a", str(machine.root / prefix.lstrip("/")), str(partial)],
            check=True,
            timeout=300,
        )
        machine.run("rm", "-rf", prefix)
        partial.rename(cached)
        complete.touch()
        return cached
