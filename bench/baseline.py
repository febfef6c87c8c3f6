"""The common pattern the agent replaces: one synchronous HTTP POST to InfluxDB per MQTT message.

A paho-mqtt subscriber (persistent session, QoS 1, automatic PUBACK when the callback returns)
turns each reading into one line of line protocol and POSTs it to InfluxDB 1.x /write over a
keep-alive connection, ignoring failures (the message is acknowledged anyway, so a failed write
is a lost reading). No timestamp is sent, so InfluxDB stamps the point on arrival, as such
scripts usually do. Kept deliberately plain: it is the baseline, not a straw man; it only adds
counters, printed as JSON on SIGTERM, so the bench can report bytes and failures.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import signal
import sys
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class CountingConnection(http.client.HTTPConnection):
    """Counts every byte http.client hands to the socket (request line, headers and body)."""

    sent = 0

    def send(self, data: Any) -> None:
        CountingConnection.sent += len(data)
        super().send(data)


class Forwarder:
    def __init__(self, influx_url: str, database: str) -> None:
        parts = urlsplit(influx_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 8086
        self.path = "/write?" + urlencode({"db": database})
        self.conn: CountingConnection | None = None
        self.stats = {"posted": 0, "ok": 0, "failed": 0, "body_bytes": 0}

    def post(self, body: bytes) -> None:
        self.stats["posted"] += 1
        self.stats["body_bytes"] += len(body)
        try:
            if self.conn is None:
                self.conn = CountingConnection(self.host, self.port, timeout=10)
            self.conn.request("POST", self.path, body, {"Content-Type": "text/plain"})
            resp = self.conn.getresponse()
            resp.read()
            self.stats["ok" if resp.status < 300 else "failed"] += 1
        except (OSError, http.client.HTTPException):
            self.stats["failed"] += 1
            if self.conn is not None:
                self.conn.close()
            self.conn = None


def to_line(topic: str, payload: bytes | bytearray) -> bytes:
    """``<prefix>/<line>/sensor/<sensor>/<measurement>`` + bare number -> one line, no timestamp."""
    _, line, _, sensor, measurement = topic.split("/")
    return f"{measurement},line={line},sensor={sensor} value={payload.decode()}".encode()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="broker, mqtt://host:port")
    p.add_argument("--client-id", required=True)
    p.add_argument("--filter", required=True, help="MQTT topic filter to subscribe to")
    p.add_argument("--influx", required=True, help="InfluxDB 1.x base URL")
    p.add_argument("--database", required=True)
    args = p.parse_args(argv)

    forwarder = Forwarder(args.influx, args.database)

    def on_connect(client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        print(f"connected {time.monotonic():.6f} {reason}", flush=True)
        client.subscribe(args.filter, qos=1)

    def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            forwarder.post(to_line(msg.topic, msg.payload))
        except ValueError:
            forwarder.stats["failed"] += 1  # not a reading we understand: drop it

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        clean_session=False,
        protocol=paho.MQTTv311,
    )
    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop: KeyboardInterrupt
    parts = urlsplit(args.url)
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    with contextlib.suppress(KeyboardInterrupt):
        client.loop_forever()
    print(json.dumps({**forwarder.stats, "request_bytes": CountingConnection.sent}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
