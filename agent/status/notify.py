"""systemd's notify protocol (sd_notify(3)), spoken directly: a datagram of ``NAME=value`` lines
to the socket named in ``$NOTIFY_SOCKET``. A few lines of protocol are not worth a dependency
(and libsystemd's Python binding needs a compiler on the gateway).

Without ``$NOTIFY_SOCKET`` (run by hand, in a container, under another supervisor) nothing is
sent and every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("edge_agent.notify")

MAX_STATUS = 200  # characters: `systemctl status` shows one line


def address(value: str) -> str | None:
    """The socket address in ``$NOTIFY_SOCKET``: a path, or ``@name`` for a name in Linux's
    abstract namespace (a leading NUL byte). None for anything else (vsock addresses)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    advises. None without a watchdog, or when ``$WATCHDOG_PID`` names another process (the
    variables were inherited, not meant for us)."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1_000_000 / 2


def one_line(text: str) -> str:
    """A STATUS value: newlines would end the assignment (and start a bogus next one)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_STATUS else flat[: MAX_STATUS - 1] + "…"


class Notifier:
    """Tells the service manager what the agent is doing. Sends never block: the datagram socket
    is non-blocking, and a full queue or a manager gone away loses that one message."""

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = address(env.get("NOTIFY_SOCKET", ""))
        self._socket: socket.socket | None = None
        if self._address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        self.watchdog_interval = (
            watchdog_interval(env, os.getpid() if pid is None else pid) if self._socket else None
        )
        self._status = ""
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: str) -> bool:
        """One datagram, ``NAME=value`` per line; True if the manager's socket took it."""
        if self._socket is None or self._address is None:
            return False
        payload = "\n".join(f"{name}={value}" for name, value in fields.items()).encode()
        try:
            self._socket.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                log.warning("notify_failed", socket=self._address, error=str(exc))
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> None:
        self._status = one_line(status)
        self.send(READY="1", STATUS=self._status)

    def status(self, text: str) -> None:
        """A new STATUS line; the same line again is not resent."""
        line = one_line(text)
        if line != self._status:
            self._status = line
            self.send(STATUS=line)

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def stopping(self, status: str) -> None:
        self._status = one_line(status)
        self.send(STOPPING="1", STATUS=self._status)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
