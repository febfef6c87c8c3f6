"""FaultServer: a fault *double* of a line-protocol server, for tests only.

Real InfluxDB and VictoriaMetrics are what tests write to. This double exists only for answers
they cannot be made to give on demand: 429/503 with Retry-After, a 413 at a chosen size, a 400
for one poisoned line that rejects the whole batch (InfluxDB 1.6 stores the good lines of such
a batch; VictoriaMetrics answers 204 and drops bad lines silently), and token auth (neither
Debian server checks `Authorization: Token`), optionally with a 401 that quotes the credentials
it was sent, as some proxies do. With ``v2_buckets`` it also plays the parts of an InfluxDB 2.x
that `edge-agent doctor` looks at (no 2.x is packaged for Debian): /ping names a version,
GET /api/v2/buckets lists those buckets, a write to another bucket is a 404, an empty write a
400 "writing requires points"; ``write_forbidden`` makes every write a 403 (a token without
write permission).

It runs in a background thread with its own event loop, so the agent under test can be a
subprocess or live in the test's own loop. Answer order for POST /write and /api/v2/write:
scripted answer (if any is queued) > outage status > 401 auth > 404 bucket > 403 forbidden >
400 bad gzip > 400 empty > 413 size > 400 bad marker > 204 accepted (the order of a real server:
credentials, bucket and permission before the body). Only a 204 from the normal path accepts
lines. Each answer can be held back (``hold``), so that requests overlapping in time show in
``RequestRecord.in_flight``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Self

from aiohttp import web

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RequestRecord:
    """One write request as the double saw it, for assertions on batching and retries."""

    path: str
    status: int
    lines: int  # non-empty lines in the decoded body
    wire_bytes: int  # body as sent (compressed size when gzipped)
    body_bytes: int  # decoded body size
    gzip: bool
    at: float  # time.monotonic() on arrival
    in_flight: int = 1  # writes being handled when this one arrived, itself included
    query: Mapping[str, str] = field(default_factory=dict)


class FaultServer:
    """Scriptable stand-in for InfluxDB's write endpoints (see the module docstring)."""

    def __init__(
        self,
        *,
        max_body_bytes: int | None = None,
        bad_marker: str | None = None,
        auth_token: str | None = None,
        echo_auth: bool = False,
        outage: int | None = None,
        hold: float = 0.0,
        port: int = 0,
        v2_buckets: Iterable[str] | None = None,
        write_forbidden: bool = False,
    ) -> None:
        # Policies are plain attributes: tests may change them while the server runs.
        self.max_body_bytes = max_body_bytes
        self.bad_marker = bad_marker
        self.auth_token = auth_token
        self.echo_auth = echo_auth  # the 401 quotes the Authorization header it got
        self.outage = outage  # a status for every write: a server that is up but failing
        self.hold = hold  # seconds each write waits before it is answered
        self.port = port
        self.v2_buckets = None if v2_buckets is None else set(v2_buckets)
        self.write_forbidden = write_forbidden
        self._lock = threading.Lock()
        self._handling = 0
        self._script: deque[tuple[int, dict[str, str]]] = deque()
        self._accepted: list[list[str]] = []
        self._requests: list[RequestRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- policy and observations ------------------------------------------------------------
    def script(self, responses: Iterable[tuple[int, Mapping[str, str]]]) -> None:
        """Queue answers (status, headers) for the next write requests, before normal rules."""
        with self._lock:
            self._script.extend((status, dict(headers)) for status, headers in responses)

    @property
    def scripted_left(self) -> int:
        with self._lock:
            return len(self._script)

    @property
    def accepted(self) -> list[list[str]]:
        """Accepted lines, one list per accepted request (a copy)."""
        with self._lock:
            return [list(batch) for batch in self._accepted]

    @property
    def lines(self) -> list[str]:
        """All accepted lines, in arrival order."""
        with self._lock:
            return [line for batch in self._accepted for line in batch]

    @property
    def requests(self) -> list[RequestRecord]:
        """Every write request with the status it got (a copy)."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget recorded requests, lines and any scripted answers left."""
        with self._lock:
            self._script.clear()
            self._accepted.clear()
            self._requests.clear()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Serve on 127.0.0.1 (the given port or a free one) from a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("FaultServer already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))  # stop()+start() reuses the same port
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(sock))
            except BaseException as e:
                errors.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"FaultServer:{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or errors:
            sock.close()
            self._thread = None
            raise RuntimeError(f"FaultServer did not start on port {self.port}: {errors}")

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application(client_max_size=1 << 30)  # our own limit decides, not aiohttp's
        app.router.add_post("/write", self._write)
        app.router.add_post("/api/v2/write", self._write)
        app.router.add_get("/ping", self._ping)
        app.router.add_get("/health", self._ping)
        app.router.add_get("/api/v2/buckets", self._buckets)
        # auto_decompress=False: we need the wire size and must decode gzip ourselves.
        runner = web.AppRunner(app, access_log=None, auto_decompress=False, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and connections and join the thread; a no-op when stopped."""
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        if runner is not None:
            fut = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
            with contextlib.suppress(Exception):
                fut.result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"FaultServer thread on port {self.port} did not stop")
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers ---------------------------------------------------------------------------
    async def _ping(self, request: web.Request) -> web.Response:
        if self.v2_buckets is not None:
            return web.Response(status=204, headers={"X-Influxdb-Version": "v2-double"})
        return web.Response(status=204)

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.auth_token is None:
            return None
        got = request.headers.get("Authorization", "")
        if got == f"Token {self.auth_token}":
            return None
        return _answer(
            401, f"unauthorized access: {got!r}" if self.echo_auth else "unauthorized access"
        )

    async def _buckets(self, request: web.Request) -> web.Response:
        """GET /api/v2/buckets as InfluxDB 2.x answers it, for the buckets it was given."""
        if self.v2_buckets is None:
            return _answer(404, "path not found")
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        name = request.query.get("name")
        buckets = [
            {"id": f"{i:016x}", "orgID": "0" * 16, "name": b, "retentionRules": [], "type": "user"}
            for i, b in enumerate(sorted(self.v2_buckets))
            if name is None or b == name
        ]
        return web.json_response({"links": {"self": "/api/v2/buckets"}, "buckets": buckets})

    async def _write(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        with self._lock:
            self._handling += 1
            in_flight = self._handling
        try:
            return await self._answer_write(request, arrived, in_flight)
        finally:
            with self._lock:
                self._handling -= 1

    async def _answer_write(
        self, request: web.Request, arrived: float, in_flight: int
    ) -> web.Response:
        raw = await request.read()
        if self.hold:
            await asyncio.sleep(self.hold)
        is_gzip = request.headers.get("Content-Encoding", "").strip().lower() == "gzip"
        body, decode_error = raw, None
        if is_gzip:
            try:
                body = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as e:
                decode_error = f"gzip: {e}"
        lines = [ln for ln in body.decode("utf-8", errors="replace").split("\n") if ln.strip()]

        accepted = False
        with self._lock:
            scripted = self._script.popleft() if self._script else None
        if scripted is not None:
            status, headers = scripted
            resp = _answer(status, f"scripted {status}", headers)
        elif self.outage is not None:
            resp = _answer(self.outage, f"outage {self.outage}")
        elif (refused := self._unauthorized(request)) is not None:
            resp = refused
        elif self.v2_buckets is not None and request.query.get("bucket") not in self.v2_buckets:
            resp = _answer(404, f'bucket "{request.query.get("bucket", "")}" not found')
        elif self.write_forbidden:
            resp = _answer(403, "insufficient permissions for write")
        elif decode_error is not None:
            resp = _answer(400, decode_error)
        elif self.v2_buckets is not None and not body:
            resp = _answer(400, "writing requires points")
        elif self.max_body_bytes is not None and len(body) > self.max_body_bytes:
            resp = _answer(413, "Request Entity Too Large")
        elif self.bad_marker is not None and (
            bad := next((ln for ln in lines if self.bad_marker in ln), None)
        ):
            resp = _answer(400, f"unable to parse '{bad}': invalid field format")
        else:
            resp, accepted = web.Response(status=204), True

        record = RequestRecord(
            path=request.path,
            status=resp.status,
            lines=len(lines),
            wire_bytes=len(raw),
            body_bytes=len(body),
            gzip=is_gzip,
            at=arrived,
            in_flight=in_flight,
            query=dict(request.query),
        )
        with self._lock:
            self._requests.append(record)
            if accepted:
                self._accepted.append(lines)
        return resp


def _answer(status: int, error: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """An InfluxDB-style answer: errors carry {"error": ...} JSON, 2xx/1xx carry no body."""
    if status < 300:
        return web.Response(status=status, headers=headers)
    return web.Response(
        status=status,
        headers=headers,
        text=json.dumps({"error": error}),
        content_type="application/json",
    )
