"""Real servers (mosquitto, InfluxDB 1.x, VictoriaMetrics, Prometheus) as plain Python objects.

Used by pytest fixtures and by bench scripts alike, so this module imports only the stdlib.
Every server binds 127.0.0.1 on a free port, keeps its data and log under the given directory,
is stopped by PID (SIGTERM, then SIGKILL after a timeout) and every wait is bounded and fails
with the server's log tail.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import gzip
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
HTTP_TIMEOUT = 30.0

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """Return a currently free loopback TCP port, never the same one twice in this process.

    Remembering handed-out ports keeps two servers created back to back (before either binds)
    from being given the same port by the kernel.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port: int = s.getsockname()[1]
        with _handed_out_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("could not find a free loopback port")


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


class BinaryMissingError(RuntimeError):
    """The server's executable is not installed (conftest turns this into a test failure)."""


class ServerError(RuntimeError):
    """A server did not start, stop or answer as expected; the message carries its log tail."""


_live: weakref.WeakSet[Server] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Kill servers a crashed script forgot, so no orphan keeps a port or a temp dir busy."""
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.kill()


@dataclass(frozen=True)
class TLSFiles:
    """A server's certificate and key, and the CA that signed them, which the helpers here
    trust when they talk to the server."""

    cert: Path
    key: Path
    ca: Path


class Server:
    """A child process we own: started on a fixed port, stopped only by its PID."""

    binary: ClassVar[str]
    name: ClassVar[str]
    tls: TLSFiles | None = None
    credentials: tuple[str, str] | None = None  # Basic auth the helpers here send

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.log_path = self.data_dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- to be provided by each server ------------------------------------------------------
    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files; called before every start."""

    def _ready(self) -> bool:
        """True once the server answers its protocol (not just accepts TCP)."""
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn the server and wait until it answers; refuse a port someone else holds."""
        if self.running:
            raise ServerError(f"{self.name} already running (pid {self.pid})")
        # mosquitto lives in /usr/sbin, which a non-root user's PATH often lacks.
        exe = shutil.which(self.binary) or shutil.which(self.binary, path="/usr/sbin:/sbin")
        if exe is None:
            raise BinaryMissingError(
                f"{self.binary} not found on PATH; run `scripts/dev test` to install the servers"
            )
        if port_accepts(self.port):
            raise ServerError(f"{self.name}: port {self.port} is already taken by another process")
        self._prepare()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} starting {self.name} ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [exe, *self._argv()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=self._env(),
                start_new_session=True,  # a Ctrl-C in the terminal must not hit it first
            )
        _live.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise ServerError(f"{self.name} exited with {code} during startup{self._tail()}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(f"{self.name} not ready after {timeout:.0f}s{self._tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (the server flushes/saves) and wait; SIGKILL and raise if it hangs."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ServerError(
                    f"{self.name} ignored SIGTERM for {timeout:.0f}s, killed{self._tail()}"
                ) from None
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: the crash case, nothing gets flushed."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise ServerError(f"{self.name} pid {proc.pid} survived SIGKILL") from None
        self._proc = None

    def restart(self) -> None:
        """Graceful stop, then start on the same port and data dir."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ----------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log yet)"
        return "\n".join(text.splitlines()[-lines:])

    def _tail(self) -> str:
        return f"\n--- {self.log_path} (tail) ---\n{self.log_tail()}"

    def _http(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> tuple[int, bytes]:
        """One HTTP call to this server (https, verified, when it serves TLS); error statuses
        are returned, not raised."""
        scheme, context = "http", None
        if self.tls is not None:
            scheme, context = "https", ssl.create_default_context(cafile=str(self.tls.ca))
        url = f"{scheme}://{LOOPBACK}:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = dict(headers or {})
        if self.credentials is not None:
            basic = base64.b64encode(":".join(self.credentials).encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _ok(self, status: int, body: bytes, what: str) -> bytes:
        if status >= 300:
            raise ServerError(
                f"{self.name} {what}: HTTP {status}: {body.decode(errors='replace')}{self._tail()}"
            )
        return body

    def _http_ready(self, path: str, check: Callable[[int, bytes], bool]) -> bool:
        try:
            status, body = self._http("GET", path, timeout=1.0)
        except (OSError, http.client.HTTPException):
            return False
        return check(status, body)


def _current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


class Mosquitto(Server):
    """mosquitto 2.0 broker with on-disk persistence, tuned so a restart loses no QoS 1 state.

    - persistence: the db (sessions, subscriptions, queued and in-flight QoS 1/2 messages with
      their packet ids) is written on SIGTERM and every `autosave_interval` seconds, so stop()
      and restart() keep everything and kill() loses at most the last ~autosave_interval+1 s.
      Pass autosave_interval=0 to save only on exit (cheaper with huge queues in benches).
    - max_queued_messages 1000000 / max_queued_bytes 0: an offline persistent session keeps up
      to a million messages instead of the default 1000, which would silently drop the rest.
    - max_inflight_messages 1000: broker-to-client QoS 1 window (default 20). An MQTT v5 client
      that sends a Receive Maximum in CONNECT overrides it for its own connection.
    - `user` is the current user: run as root, mosquitto 2.0 otherwise drops to `mosquitto` and
      can no longer write its db and log under a root-owned temp dir.
    """

    binary = "mosquitto"
    name = "mosquitto"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        autosave_interval: int = 1,
        security: str | None = None,
    ) -> None:
        """``security``: conf lines for the listener instead of ``allow_anonymous true`` (TLS
        files, password_file, ...); the readiness check is then a plain TCP accept."""
        super().__init__(data_dir, port)
        self.autosave_interval = autosave_interval
        self.security = security
        self.conf_path = self.data_dir / "mosquitto.conf"
        self.db_dir = self.data_dir / "mosquitto-db"

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def _prepare(self) -> None:
        self.db_dir.mkdir(exist_ok=True)
        self.conf_path.write_text(
            f"""\
listener {self.port} {LOOPBACK}
{self.security or "allow_anonymous true"}
user {_current_user()}
persistence true
persistence_location {self.db_dir}
autosave_interval {self.autosave_interval}
autosave_on_changes false
max_queued_messages 1000000
max_queued_bytes 0
max_inflight_messages 1000
set_tcp_nodelay true
log_dest stdout
log_type error
log_type warning
log_type notice
log_type information
log_timestamp true
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""
        )

    def _argv(self) -> list[str]:
        return ["-c", str(self.conf_path)]

    def _ready(self) -> bool:
        """A full MQTT 3.1.1 CONNECT/CONNACK, so we know a broker (ours) really answers."""
        if self.security is not None:
            return port_accepts(self.port)
        connect = bytes(
            [0x10, 12, 0, 4, *b"MQTT", 4, 0x02, 0, 10, 0, 0]
        )  # clean session, keepalive 10 s, empty client id
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as s:
                s.sendall(connect)
                connack = s.recv(4)
                s.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError:
            return False
        return connack[:1] == b"\x20" and connack[3:4] == b"\x00"


class InfluxDB1(Server):
    """InfluxDB 1.x (Debian ships 1.6.7): only the v1 API, i.e. POST /write, no /api/v2/write.

    A 204 from /write means the points are in the WAL (fsynced: wal-fsync-delay 0s) and at once
    queryable, so a SIGKILL right after loses nothing. Writes are upserts: same series + time =
    one point. A 400 on a batch with a bad line is a *partial write*: the good lines are stored.
    With ``tls`` it serves https only, with that certificate. With ``admin`` (user, password)
    authentication is on, that admin user is created at the first start, and the helpers here
    act as it.
    """

    binary = "influxd"
    name = "influxd"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        max_body_size: int = 25_000_000,
        tls: TLSFiles | None = None,
        admin: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self.rpc_port = free_port()
        self.max_body_size = max_body_size
        self.tls = tls
        self.credentials = admin
        self.conf_path = self.data_dir / "influxdb.conf"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    def _prepare(self) -> None:
        d = self.data_dir
        https = ""
        if self.tls is not None:
            https = (
                f'  https-enabled = true\n  https-certificate = "{self.tls.cert}"\n'
                f'  https-private-key = "{self.tls.key}"\n'
            )
        self.conf_path.write_text(
            f"""\
reporting-disabled = true
bind-address = "{LOOPBACK}:{self.rpc_port}"

[meta]
  dir = "{d / "meta"}"
  logging-enabled = false

[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  wal-fsync-delay = "0s"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "{LOOPBACK}:{self.port}"
  auth-enabled = {"true" if self.credentials else "false"}
  log-enabled = false
  pprof-enabled = false
  max-body-size = {self.max_body_size}
  max-row-limit = 0
{https}
[logging]
  level = "info"
  suppress-logo = true
"""
        )

    def _argv(self) -> list[str]:
        return ["run", "-config", str(self.conf_path)]

    def _env(self) -> dict[str, str]:
        # INFLUXDB_* variables override the config file; a stray one must not move our ports.
        return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}

    def _ready(self) -> bool:
        return self._http_ready("/ping", lambda status, _: status == 204)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        super().start(timeout)
        if self.credentials is not None:
            # Until an admin exists, influxd takes this one statement without credentials; on a
            # restart the user exists and the statement, sent as that user, changes nothing.
            user, password = self.credentials
            self.query(
                "",
                f"CREATE USER {_ident(user)} WITH PASSWORD {_string(password)} WITH ALL PRIVILEGES",
            )

    # -- data -------------------------------------------------------------------------------
    def create_database(self, name: str) -> None:
        self.query("", f"CREATE DATABASE {_ident(name)}")

    def write(self, db: str, lines: str, precision: str = "ns", *, gzip: bool = False) -> None:
        """POST line protocol to /write (a test convenience); raise on any non-2xx."""
        params = {"db": db, "precision": precision}
        status, resp = self._http("POST", "/write", params, *_lp_body(lines, gzip))
        self._ok(status, resp, "write")

    def query(self, db: str, q: str) -> dict[str, Any]:
        """Run InfluxQL with epoch=ns; raise with the server's error text on any error.

        POST rather than GET so that CREATE/DROP work too and long queries fit.
        """
        params = {"q": q, "epoch": "ns"}
        if db:
            params["db"] = db
        status, body = self._http(
            "POST",
            "/query",
            body=urllib.parse.urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self._ok(status, body, f"query {q!r}")
        result: dict[str, Any] = json.loads(body)
        errors = [r["error"] for r in result.get("results", []) if "error" in r]
        if "error" in result:
            errors.insert(0, result["error"])
        if errors:
            raise ServerError(f"influxd query {q!r} failed: {'; '.join(errors)}")
        return result

    def count(self, db: str, measurement: str, field: str = "value") -> int:
        """Number of points with `field` set, over all series of the measurement."""
        res = self.query(db, f"SELECT count({_ident(field)}) FROM {_ident(measurement)}")
        series = res["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0

    def rows(self, db: str, measurement: str) -> list[dict[str, Any]]:
        """All points as dicts (`time` in ns plus every tag and field column), time-ordered."""
        res = self.query(db, f"SELECT * FROM {_ident(measurement)}")
        out: list[dict[str, Any]] = []
        for s in res["results"][0].get("series", []):
            out.extend(dict(zip(s["columns"], values, strict=True)) for values in s["values"])
        return out


def _ident(name: str) -> str:
    """Double-quote an InfluxQL identifier (names like `tag` or `time` are keywords)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _string(value: str) -> str:
    """Single-quote an InfluxQL string literal (a password)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class VictoriaMetrics(Server):
    """VictoriaMetrics single node (Debian ships 1.79.5) as a line-protocol target.

    It accepts POST /write and /api/v2/write (also /influx/write); `m,tag=a value=1 <ts>`
    becomes the series `m_value{tag="a"}` (a `db` query arg on /write becomes a `db` label).

    Timestamps are kept in **milliseconds**: nanosecond input is truncated (floored) to the
    millisecond (-influxTrimTimestamp=1ms) and export returns integer ms. Without `precision`
    VM guesses the unit from the magnitude (s/ms/us/ns), so always send `precision=ns`.
    Samples more than 1 day in the future are dropped with a warning, still answering 204.
    Unlike InfluxDB there is no upsert: the same point written twice, or two points of one
    series within one millisecond, are two samples, unless the server runs with
    `-dedup.minScrapeInterval=1ms` (pass it in `extra_args`), which keeps one per millisecond.
    Unparseable lines are dropped (logged) and the request still gets 204: VM never says 400.

    Visibility: after a 204 rows sit in an in-memory buffer for up to ~1 s; /internal/force_flush
    makes them searchable at once. Durability: a SIGKILL loses roughly the last 10-15 s of
    writes even after force_flush; SIGTERM (stop/restart) persists everything.
    """

    binary = "victoria-metrics"
    name = "victoria-metrics"

    def __init__(
        self, data_dir: Path, port: int | None = None, *, extra_args: Sequence[str] = ()
    ) -> None:
        super().__init__(data_dir, port)
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _argv(self) -> list[str]:
        return [
            f"-storageDataPath={self.data_dir / 'vmdata'}",
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            "-retentionPeriod=100y",  # fixed test timestamps may lie far in the past
            "-search.latencyOffset=0s",  # otherwise samples of the last 30 s are hidden
            "-search.disableCache",  # no stale query results between two reads of a test
            *self.extra_args,
        ]

    def _ready(self) -> bool:
        return self._http_ready("/health", lambda status, body: status == 200 and b"OK" in body)

    # -- data -------------------------------------------------------------------------------
    def write(self, lines: str, precision: str = "ns", *, gzip: bool = False) -> None:
        """POST line protocol to /api/v2/write (a test convenience); raise on any non-2xx."""
        params = {"precision": precision}
        status, resp = self._http("POST", "/api/v2/write", params, *_lp_body(lines, gzip))
        self._ok(status, resp, "write")

    def flush(self) -> None:
        """Make buffered rows searchable now instead of within ~1 s (not durable, though)."""
        status, body = self._http("GET", "/internal/force_flush")
        self._ok(status, body, "force_flush")

    def export(self, match: str) -> list[dict[str, Any]]:
        """Flush, then every matching series as {"metric", "values", "timestamps" (ms)}.

        `end` is explicit because VM's default is its per-second clock, which hides the
        samples of the current second.
        """
        self.flush()
        params = {"match[]": match, "start": "0", "end": str(int(time.time()) + 86_400)}
        status, body = self._http("GET", "/api/v1/export", params)
        self._ok(status, body, f"export {match!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def samples(self, match: str) -> int:
        """Total number of samples over all series matching `match`."""
        return sum(len(s["values"]) for s in self.export(match))

    def wait_for_samples(
        self, match: str, expected: int, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Poll export until at least `expected` samples match (e.g. the agent delivering)."""
        deadline = time.monotonic() + timeout
        while True:
            series = self.export(match)
            got = sum(len(s["values"]) for s in series)
            if got >= expected:
                return series
            if time.monotonic() > deadline:
                raise ServerError(
                    f"victoria-metrics: {got} of {expected} samples for {match!r} "
                    f"after {timeout:.0f}s{self._tail()}"
                )
            time.sleep(0.1)


def _lp_body(lines: str, compress: bool) -> tuple[bytes, dict[str, str]]:
    """Body and headers for a line-protocol POST, gzipped like the agent sends it if asked."""
    if compress:
        return gzip.compress(lines.encode()), {"Content-Encoding": "gzip"}
    return lines.encode(), {}


class Prometheus(Server):
    """Prometheus 2.x (Debian ships 2.42) with the given configuration text, its TSDB under the
    data dir. Tests use it to scrape a running agent and evaluate the alert rules."""

    binary = "prometheus"
    name = "prometheus"

    def __init__(self, data_dir: Path, config: str, port: int | None = None) -> None:
        super().__init__(data_dir, port)
        self.config = config
        self.conf_path = self.data_dir / "prometheus.yml"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _prepare(self) -> None:
        self.conf_path.write_text(self.config)

    def _argv(self) -> list[str]:
        return [
            f"--config.file={self.conf_path}",
            f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--storage.tsdb.retention.time=1d",
        ]

    def _ready(self) -> bool:
        return self._http_ready("/-/ready", lambda status, _: status == 200)

    def api(self, path: str) -> Any:
        """The ``data`` of a GET on the HTTP API (``/api/v1/...``); raise unless it succeeded."""
        status, body = self._http("GET", path)
        answer = json.loads(self._ok(status, body, f"GET {path}"))
        if answer.get("status") != "success":
            raise ServerError(f"prometheus {path}: {answer}{self._tail()}")
        return answer["data"]
