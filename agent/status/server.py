"""/healthz, /readyz and /metrics over HTTP, for systemd, load balancers and Prometheus.

Served by prometheus-client's own threaded WSGI server rather than aiohttp.web: the agent
already loads it for /metrics, and it costs no extra memory on a small gateway. A scrape never
waits on the event loop, so it still answers while the loop is busy.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from agent.redact import Redactor
from agent.status.metrics import Metrics

Checks = Callable[[], dict[str, str]]
StartResponse = Callable[..., Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def build_app(metrics: Metrics, problems: Checks, redactor: Redactor) -> App:
    """``problems`` returns what keeps the agent from being ready, by component ({} = ready).
    ``redactor`` masks the configured secrets in them: a problem may quote a server or a
    library, and /readyz is often open to more people than the config is."""
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            found = redactor.value(problems())
            body = json.dumps({"ready": not found, "problems": found}, indent=1) + "\n"
            status = "200 OK" if not found else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [body.encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /healthz, /readyz or /metrics\n"]

    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the journal."""


class _Server6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class StatusServer:
    def __init__(self, app: App, host: str, port: int) -> None:
        server_class = _Server6 if ":" in host else ThreadingWSGIServer
        self._httpd = make_server(host, port, app, server_class, handler_class=_Quiet)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="status", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
