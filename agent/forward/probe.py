"""A look at an output's server with the agent's own settings, for ``edge-agent doctor``,
that writes no point into the user's database.

- ``/ping`` through the agent's Writer (its TLS settings): reachable, and which server answers
  (InfluxDB names its version; VictoriaMetrics does not, and answers ``/health``).
- The list of databases (v1: ``SHOW DATABASES``, a read-only query) or buckets (v2: the buckets
  API through influxdb-client): are the credentials accepted. A user or token allowed to write
  only may not be allowed to list, so a name missing from the list proves nothing.
- A write with an empty body through the agent's Writer. Servers check the credentials (401),
  the database or bucket (404) and the permission to write (403) before they read the body, so
  its answer settles all three; then InfluxDB 1.x and VictoriaMetrics accept the empty body
  (204) and InfluxDB 2.x refuses it as empty (400 "writing requires points"). No point either way.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp

from agent.config import OutputSection
from agent.forward.classify import Outcome
from agent.forward.http import Ping, Writer, encode_body, endpoint, ssl_context

# The agent's session leaves bodies as they come (it sends gzip and never reads compressed
# answers): these probes read answers, so they ask for them plain.
PLAIN = {"Accept-Encoding": "identity"}
INFLUXDB = "influxdb"
VICTORIAMETRICS = "victoriametrics"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Listing:
    """Databases (v1) or buckets (v2) the credentials may see; ``status`` None: no answer."""

    status: int | None
    names: frozenset[str] = frozenset()
    message: str = ""


@dataclass(frozen=True, slots=True)
class ServerLook:
    ping: Ping
    kind: str = UNKNOWN  # INFLUXDB, VICTORIAMETRICS or UNKNOWN
    listing: Listing | None = None
    write: Outcome | None = None  # the empty write's answer


async def look(cfg: OutputSection, session: aiohttp.ClientSession, limit: float) -> ServerLook:
    """Each request bounded by ``limit`` seconds; nothing more once the server does not answer."""
    cfg = cfg.model_copy(update={"timeout": limit})
    writer = Writer(cfg, session)
    ping = await writer.ping()
    if ping.failed is not None:
        return ServerLook(ping)
    kind = INFLUXDB if ping.version else await _kind(cfg, session)
    listing = None
    if kind == INFLUXDB:
        if cfg.api == "v1":
            listing = await _databases(cfg, session)
        else:
            listing = await asyncio.to_thread(_buckets, cfg)
    write = await writer.post(await encode_body([], cfg.gzip_level))
    return ServerLook(ping, kind, listing, write)


async def _kind(cfg: OutputSection, session: aiohttp.ClientSession) -> str:
    """A server that names no InfluxDB version: VictoriaMetrics answers /health with "OK"."""
    try:
        async with session.get(
            cfg.url.rstrip("/") + "/health",
            headers=PLAIN,
            timeout=aiohttp.ClientTimeout(total=cfg.timeout),
            ssl=ssl_context(cfg),
            allow_redirects=False,
        ) as response:
            body = await response.content.read(64)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return UNKNOWN
    return VICTORIAMETRICS if response.status == 200 and body.strip() == b"OK" else UNKNOWN


async def _databases(cfg: OutputSection, session: aiohttp.ClientSession) -> Listing:
    try:
        async with session.get(
            cfg.url.rstrip("/") + "/query",
            params={"q": "SHOW DATABASES"},
            headers=PLAIN,
            auth=endpoint(cfg).auth,
            timeout=aiohttp.ClientTimeout(total=cfg.timeout),
            ssl=ssl_context(cfg),
            allow_redirects=False,
        ) as response:
            text = (await response.content.read(1 << 20)).decode(errors="replace")
            status = response.status
    except TimeoutError:
        return Listing(None, message=f"no answer to SHOW DATABASES within {cfg.timeout:g}s")
    except (aiohttp.ClientError, OSError) as exc:
        return Listing(None, message=f"{type(exc).__name__}: {exc}")
    if status != 200:
        return Listing(status, message=error_text(text))
    try:
        series = json.loads(text)["results"][0].get("series", [])
        names = frozenset(str(row[0]) for s in series for row in s.get("values", []))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return Listing(status, message=f"not an InfluxDB answer: {text[:200]}")
    return Listing(status, names)


def _buckets(cfg: OutputSection) -> Listing:
    """Blocking (influxdb-client's management API is synchronous): run on a thread. Imported
    here, so the daemon never loads the client."""
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.rest import ApiException
    from urllib3.exceptions import HTTPError

    token = cfg.token.get_secret_value() if cfg.token else ""
    client = InfluxDBClient(
        url=cfg.url,
        token=token,
        org=cfg.org,
        timeout=int(cfg.timeout * 1000),
        verify_ssl=not cfg.tls_insecure,
        ssl_ca_cert=str(cfg.tls_ca_file) if cfg.tls_ca_file else None,
    )
    query = {"name": cfg.bucket, **({"org": cfg.org} if cfg.org else {})}
    try:
        found = client.buckets_api().find_buckets(**query)  # type: ignore[no-untyped-call]
    except ApiException as exc:
        return Listing(exc.status, message=error_text(exc.body or exc.reason or ""))
    except (HTTPError, OSError) as exc:
        return Listing(None, message=f"{type(exc).__name__}: {exc}")
    finally:
        client.close()  # type: ignore[no-untyped-call]
    return Listing(200, frozenset(b.name for b in found.buckets or []))


def error_text(body: str | bytes) -> str:
    """The message of an InfluxDB error body ({"error": ...} in 1.x, {"message": ...} in 2.x)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    if isinstance(data, dict):
        return str(data.get("error") or data.get("message") or text)[:300]
    return text.strip()[:300]
