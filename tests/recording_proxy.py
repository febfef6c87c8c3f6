"""RecordingProxy: a pass-through observer in front of a real server, for tests only.

It is not a double: every write goes to the real server, which gives the answer. It records
the order in which writes were answered, with their lines, because a server cannot tell which
of its points came first. While the server is down it answers 502, as a reverse proxy does.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from agent.tools.localservers import free_port


@dataclass(frozen=True)
class Answered:
    status: int
    lines: list[str]


class RecordingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.answered: list[Answered] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accepted(self) -> list[list[str]]:
        with self._lock:
            return [a.lines for a in self.answered if a.status < 300]

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("recording proxy did not start")

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{path:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp has already undone the gzip
        dropped = ("host", "content-encoding", "content-length")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in dropped}
        try:
            async with (
                aiohttp.ClientSession(auto_decompress=False) as session,
                session.post(
                    f"{self.upstream}{request.path_qs}", data=body, headers=headers
                ) as resp,
            ):
                status, text = resp.status, await resp.read()
        except aiohttp.ClientError as exc:
            status, text = 502, str(exc).encode()
        lines = [line for line in body.decode().split("\n") if line]
        with self._lock:
            self.answered.append(Answered(status, lines))
        return web.Response(status=status, body=text)
