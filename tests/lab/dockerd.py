"""A private docker daemon for the image tests, and a base image that needs no registry.

No image registry is reachable from the project's machines, and the machine's own docker
service (if any) is not ours to use. So a test starts ``dockerd`` by hand on its own socket,
pid file and exec root, and builds ``FROM`` a Debian image imported from a debootstrap rootfs
(tests/lab/rootfs.py). The daemon touches nothing of the host's network: no bridge, no iptables
rules, no forwarding; containers and builds use the host network (loopback included).

Its data root is cached under ``.cache/docker`` (git-ignored): the imported base and the build
cache survive between runs, so a warm run does not rebuild what did not change. A lock file
keeps two runs of one checkout from sharing it at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from lab import machine, rootfs

DATA_ROOT = rootfs.ROOT / ".cache" / "docker"
DOCKER = "/usr/bin/docker"  # Debian's CLI: another `docker` earlier on PATH may be a stranger
# The base image: what `python3 -m venv` needs, and CA certificates for the build's pip.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Left out of the base image: apt's downloaded packages and lists (100 MB) and the rootfs
# cache's own marker.
BASE_EXCLUDES = ("./.complete", "./var/cache/apt/*", "./var/lib/apt/lists/*")
START_TIMEOUT = 60.0


class Docker:
    """The docker CLI bound to one daemon's socket."""

    def __init__(self, socket: Path) -> None:
        self.host = f"unix://{socket}"

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [DOCKER, "-H", self.host, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            # The classic builder, Debian 12's default, whatever the caller's environment says:
            # its cache is the images it leaves, which the tests keep bounded with a prune.
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, proc.args, proc.stdout, proc.stderr
            )
        return proc

    def out(self, *args: str, timeout: float = 120) -> str:
        return self(*args, timeout=timeout).stdout.strip()


def _require() -> None:
    if os.geteuid() != 0:
        raise rootfs.LabUnavailable("dockerd needs root")
    missing = [c for c in ("dockerd", DOCKER) if shutil.which(c) is None]
    if missing:
        raise rootfs.LabUnavailable(f"missing {', '.join(missing)}: run `scripts/dev test`")


@contextlib.contextmanager
def daemon() -> Iterator[Docker]:
    """dockerd with its own socket, pid file, exec root and config, stopped by its PID."""
    _require()
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    # Short paths: containerd's sockets live under the exec root (108 bytes at most).
    run_dir = Path(tempfile.mkdtemp(prefix="edge-dockerd-"))
    with open(DATA_ROOT.with_name("docker.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (run_dir / "daemon.json").write_text("{}\n")  # not the host's /etc/docker/daemon.json
        socket = run_dir / "docker.sock"
        log = (run_dir / "dockerd.log").open("wb")
        proc = subprocess.Popen(
            [
                "dockerd",
                f"--config-file={run_dir / 'daemon.json'}",
                f"--host=unix://{socket}",
                f"--pidfile={run_dir / 'dockerd.pid'}",
                f"--exec-root={run_dir / 'exec'}",
                f"--data-root={DATA_ROOT}",
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--log-level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            docker = Docker(socket)
            _wait_ready(docker, proc, run_dir)
            yield docker
        finally:
            machine.stop(proc)
            log.close()
            _unmount_under(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)


def _wait_ready(docker: Docker, proc: subprocess.Popen[bytes], run_dir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if docker("version", check=False, timeout=10).returncode == 0:
            return
        time.sleep(0.2)
    tail = (run_dir / "dockerd.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"dockerd did not come up (exit {proc.poll()}):\n{tail}")


def _unmount_under(folder: Path) -> None:
    """What dockerd leaves mounted in its exec root (the default network namespace's nsfs)."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{folder}/")), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, timeout=30)


def base_image(docker: Docker) -> str:
    """The Debian bookworm rootfs with python3, imported once as ``local/bookworm-python``."""
    root = rootfs.build(include=BASE_PACKAGES)
    tag = f"local/bookworm-python:{root.name}"
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    excludes = [f"--exclude={pattern}" for pattern in BASE_EXCLUDES]
    with subprocess.Popen(
        ["tar", "-C", str(root), *excludes, "-c", "."], stdout=subprocess.PIPE
    ) as tar:
        imported = subprocess.run(
            [DOCKER, "-H", docker.host, "import", "-", tag],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=300,
        )
    if tar.returncode != 0 or imported.returncode != 0:
        raise RuntimeError(f"importing {root} failed: {imported.stderr}")
    return tag
