"""Whether an agent runs on this data dir, and what it says about itself while it does.

"Running" means a process holds the data dir's lock (agent.lock, see daemon.lock_data_dir). It
is read from /proc/locks rather than tested by taking the lock: even a shared lock held for an
instant would make an agent starting in that instant refuse to run. The live facts (MQTT
connected, output health, last success, drops since start) come from its status endpoint,
asked with a short timeout.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import StatusSection
from agent.ops.render import CannotRun

LOCK_NAME = "agent.lock"
PROC_LOCKS = Path("/proc/locks")
HTTP_SECONDS = 2.0


def lock_holder(data_dir: Path, proc_locks: str | None = None) -> int | None:
    """The pid of the process holding ``data_dir``'s lock, None when no process does."""
    lock = data_dir / LOCK_NAME
    try:
        st = os.stat(lock)
        written = lock.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CannotRun(
            f"cannot read {lock}: {exc.strerror} (run as the agent's user, or root)"
        ) from exc
    if proc_locks is None:
        try:
            proc_locks = PROC_LOCKS.read_text()
        except OSError as exc:
            raise CannotRun(f"cannot tell whether the agent runs: {PROC_LOCKS}: {exc}") from exc
    device = (os.major(st.st_dev), os.minor(st.st_dev))
    for pid, lock_device, inode in flocks(proc_locks):
        # A file on an overlay may show the device of the layer below: the inode and the pid
        # the agent wrote into the file then identify it.
        if inode == st.st_ino and (lock_device == device or str(pid) == written):
            return pid
    return None


def flocks(text: str) -> list[tuple[int, tuple[int, int], int]]:
    """(pid, (major, minor), inode) of each flock held, from /proc/locks' text; waiters
    (``->``) hold nothing and are left out."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        major, minor, inode = parts[5].split(":")
        found.append((int(parts[4]), (int(major, 16), int(minor, 16)), int(inode)))
    return found


def endpoint(status: StatusSection) -> str:
    """The base URL of the agent's status server; a wildcard listen address is asked on
    loopback."""
    host, port = status.host_port
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(slots=True)
class Live:
    """What a running agent answered at /readyz and /metrics."""

    ready: bool
    problems: dict[str, str]
    samples: list[Sample] = field(default_factory=list)

    def value(self, name: str, **labels: str) -> float | None:
        """The sample's value, None if the agent does not export it (yet)."""
        for s in self.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        return None

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """Values of ``name`` keyed by ``label``, among samples that match ``labels``."""
        return {
            s.labels[label]: s.value
            for s in self.samples
            if s.name == name
            and label in s.labels
            and all(s.labels.get(k) == v for k, v in labels.items())
        }


def ask(base: str, seconds: float = HTTP_SECONDS) -> Live:
    """/readyz (a 503 answers too: not ready) and /metrics; OSError when the agent does not
    answer within ``seconds``."""
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=seconds) as resp:
            ready = json.loads(resp.read())
    except urllib.error.HTTPError as answer:
        if answer.code != 503:
            raise
        ready = json.loads(answer.read())
    with urllib.request.urlopen(f"{base}/metrics", timeout=seconds) as resp:
        text = resp.read().decode()
    return Live(bool(ready["ready"]), dict(ready["problems"]), parse_metrics(text))


def parse_metrics(text: str) -> list[Sample]:
    from prometheus_client.parser import text_string_to_metric_families  # only if it runs

    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
