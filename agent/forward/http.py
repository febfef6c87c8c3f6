"""One line-protocol write over HTTP: the endpoint for the configured API, gzip, the answer."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import gzip
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp

from agent.config import OutputSection
from agent.forward.classify import Outcome, classify, failure, tls_failure
from agent.spool.chunks import Batch
from agent.spool.deflate import gzip_member

GZIP_OFF_LOOP = 128 * 1024
# One compression thread for all outputs: each extra thread costs its own malloc arena.
_GZIP_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gzip")
ERROR_TEXT_LIMIT = 2048
PING_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Ping:
    """The answer to a ping: ``failed`` is None when the server answered at all."""

    failed: Outcome | None
    date: float | None  # the server's clock (epoch seconds), when it sent a Date
    version: str = ""  # X-Influxdb-Version: which server answers (VictoriaMetrics sends none)


def _date(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    params: dict[str, str]
    headers: dict[str, str]
    auth: aiohttp.BasicAuth | None


def endpoint(cfg: OutputSection) -> Endpoint:
    base = cfg.url.rstrip("/")
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    auth = None
    if cfg.api == "v2":
        params = {"bucket": cfg.bucket, "precision": "ns"}
        if cfg.org:
            params["org"] = cfg.org
        if cfg.token is not None:
            headers["Authorization"] = f"Token {cfg.token.get_secret_value()}"
        return Endpoint(f"{base}/api/v2/write", params, headers, None)
    params = {"db": cfg.database, "precision": "ns"}
    if cfg.retention_policy:
        params["rp"] = cfg.retention_policy
    if cfg.username:
        password = cfg.password.get_secret_value() if cfg.password else ""
        auth = aiohttp.BasicAuth(cfg.username, password)
    return Endpoint(f"{base}/write", params, headers, auth)


def ssl_context(cfg: OutputSection) -> ssl.SSLContext | bool:
    if cfg.tls_insecure:
        return False
    if cfg.tls_ca_file:
        return ssl.create_default_context(cafile=str(cfg.tls_ca_file))
    return True


async def encode_body(lines: list[bytes], level: int) -> bytes:
    """Newline-terminated lines, gzipped when asked; large bodies compress on a worker thread
    (zlib releases the GIL) so the loop keeps taking MQTT messages. The final newline joins in
    as an empty line: appending it to the joined body would copy the whole body once more."""
    body = b"\n".join([*lines, b""])
    if level == 0:
        return body
    if len(body) >= GZIP_OFF_LOOP:
        return await asyncio.get_running_loop().run_in_executor(
            _GZIP_THREAD, functools.partial(gzip.compress, body, level, mtime=0)
        )
    return gzip.compress(body, level, mtime=0)


def encode_batch(batch: Batch, level: int) -> bytes:
    """A batch read from the spool as a request body: its stored segments laid end to end in one
    gzip member (nothing compressed again), or plain text when ``level`` is 0."""
    if level == 0:
        return batch.text()
    return gzip_member(batch.segments)


def tls_problem(exc: aiohttp.ClientSSLError) -> str:
    """What an operator must fix, worded from the handshake's error."""
    server = f"{exc.host}:{exc.port}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        why = getattr(error, "verify_message", None) or error
        return (
            f"TLS certificate of {server} not trusted ({why}): set tls_ca_file to the CA that "
            "signed it, or check the host name in url"
        )
    reason = getattr(exc.os_error, "reason", None) or exc.os_error
    return f"TLS handshake with {server} failed ({reason}): check that url's port serves https"


class Writer:
    def __init__(self, cfg: OutputSection, session: aiohttp.ClientSession) -> None:
        self.cfg = cfg
        self.session = session
        self.target = endpoint(cfg)
        self.ssl = ssl_context(cfg)
        self.timeout = aiohttp.ClientTimeout(total=cfg.timeout)

    async def ping(self) -> Ping:
        """``GET /ping``: is the server there at all? A probe that costs the server nothing while
        the link is down (InfluxDB and VictoriaMetrics answer it without credentials). Any HTTP
        answer counts, and carries the server's clock in its Date header."""
        url = self.cfg.url.rstrip("/") + "/ping"
        try:
            async with self.session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=PING_TIMEOUT),
                ssl=self.ssl,
                allow_redirects=False,
            ) as response:
                headers = response.headers
                return Ping(None, _date(headers.get("Date")), headers.get("X-Influxdb-Version", ""))
        except aiohttp.ClientSSLError as exc:
            return Ping(tls_failure(tls_problem(exc)), None)
        except TimeoutError:
            return Ping(failure("timeout", f"no answer to /ping within {PING_TIMEOUT:g}s"), None)
        except (aiohttp.ClientError, OSError) as exc:
            return Ping(failure("connection_error", f"{type(exc).__name__}: {exc}"), None)

    async def post(self, body: bytes) -> Outcome:
        headers = dict(self.target.headers)
        if self.cfg.gzip_level:
            headers["Content-Encoding"] = "gzip"
        try:
            async with self.session.post(
                self.target.url,
                params=self.target.params,
                data=body,
                headers=headers,
                auth=self.target.auth,
                timeout=self.timeout,
                ssl=self.ssl,
                allow_redirects=False,
            ) as response:
                text = ""
                if response.status >= 300:
                    text = (await response.content.read(ERROR_TEXT_LIMIT)).decode(errors="replace")
                else:
                    await response.read()
                return classify(
                    response.status, response.headers, time.time(), self.cfg.retry_after_cap, text
                )
        except TimeoutError:
            return failure("timeout", f"no answer within {self.cfg.timeout:g}s")
        except aiohttp.ClientSSLError as exc:
            return tls_failure(tls_problem(exc))
        except (aiohttp.ClientError, OSError) as exc:
            return failure("connection_error", f"{type(exc).__name__}: {exc}")
