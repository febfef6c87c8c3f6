"""/healthz, /readyz and /metrics over HTTP, for systemd, load balancers and Prometheus."""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.status.metrics import Metrics

Checks = Callable[[], dict[str, str]]


def build_app(metrics: Metrics, problems: Checks) -> web.Application:
    """``problems`` returns what keeps the agent from being ready, by component ({} = ready)."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        found = problems()
        body = json.dumps({"ready": not found, "problems": found}, indent=1) + "\n"
        return web.Response(
            status=200 if not found else 503, text=body, content_type="application/json"
        )

    async def metrics_page(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
