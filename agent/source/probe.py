"""A look at the broker with the agent's settings, for ``edge-agent doctor``: does it answer,
does it let the agent in, does it hold the agent's persistent session.

Connecting with the agent's own client id takes that session over, and the broker hands the
connection the messages queued for the agent. So the look never acknowledges one (paho's manual
ack, and a receive maximum of 1 keeps at most one in flight): they stay in the session and go to
the agent on its next connection. It never subscribes or unsubscribes, and a session it created
where none was is dropped again (session expiry 0 on DISCONNECT; a clean connection for MQTT
3.1.1), so the next look does not find a session of its own making.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MQTTSection
from agent.source.mqtt import tls_context

KEEPALIVE = 10


@dataclass(frozen=True, slots=True)
class BrokerAnswer:
    error: str = ""  # no MQTT answer: refused, unreachable, TLS, timeout
    refused: str = ""  # the CONNACK's refusal: bad user name or password, not authorized ...
    session_present: bool = False


def look(cfg: MQTTSection, client_id: str, keep_session: bool, timeout: float) -> BrokerAnswer:
    """Connect as ``client_id`` and disconnect again, within about ``timeout`` seconds per step.
    ``keep_session``: connect as the agent does (clean start false, its session expiry) and
    report whether the broker had a session; otherwise leave no session behind."""
    client = _client(cfg, client_id, keep_session)
    client.connect_timeout = timeout
    acks: list[tuple[bool, ReasonCode]] = []
    client.on_connect = lambda _c, _u, flags, code, _p: acks.append((flags.session_present, code))
    v5 = cfg.protocol == "5"
    try:
        client.connect(
            cfg.host,
            cfg.port,
            KEEPALIVE,
            clean_start=not keep_session if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=_connect_properties(cfg, keep_session) if v5 else None,
        )
        if not _loop_until(client, lambda: bool(acks), timeout):
            return BrokerAnswer(error=f"no CONNACK within {timeout:g}s: is this an MQTT broker?")
    except (OSError, ssl.SSLError, ValueError) as exc:
        return BrokerAnswer(error=_describe(exc))
    present, code = acks[0]
    if code.is_failure:
        sock = client.socket()
        if sock is not None:
            sock.close()
        return BrokerAnswer(refused=str(code))
    created = keep_session and not present
    _disconnect(client, drop_session=created and v5, timeout=timeout)
    if created and not v5:
        look(cfg, client_id, keep_session=False, timeout=timeout)
    return BrokerAnswer(session_present=present)


def _client(cfg: MQTTSection, client_id: str, keep_session: bool) -> paho.Client:
    v5 = cfg.protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else not keep_session,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        manual_ack=True,
    )
    if cfg.username:
        password = cfg.password.get_secret_value() if cfg.password else None
        client.username_pw_set(cfg.username, password)
    if cfg.use_tls:
        client.tls_set_context(tls_context(cfg))
        client.tls_insecure_set(cfg.tls.insecure)
    return client


def _connect_properties(cfg: MQTTSection, keep_session: bool) -> Properties:
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    # The agent's own expiry: a CONNECT sets the session's expiry, and a shorter one would
    # shorten how long the broker keeps the agent's messages.
    properties.SessionExpiryInterval = int(cfg.session_expiry) if keep_session else 0
    properties.ReceiveMaximum = 1
    return properties


def _disconnect(client: paho.Client, drop_session: bool, timeout: float) -> None:
    gone: list[bool] = []
    client.on_disconnect = lambda *_: gone.append(True)
    properties = None
    if drop_session:
        properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
    client.disconnect(properties=properties)
    _loop_until(client, lambda: bool(gone), timeout)


def _loop_until(client: paho.Client, done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        if client.loop(timeout=0.05) not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN):
            break
    return done()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    return f"{type(exc).__name__}: {exc}"
