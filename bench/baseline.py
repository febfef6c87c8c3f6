"""The common pattern the agent replaces: one synchronous HTTP POST to InfluxDB per MQTT message.

A paho-mqtt subscriber (persistent session, QoS 1, automatic PUBACK when the callback returns)
turns each reading into one line of line protocol and POSTs it to InfluxDB 1.x /write on a new
connection with ``requests.post(url, data=line)``, the usual one-liner, ignoring failures (the
message is acknowledged anyway, so a failed write is a lost reading). No timestamp is sent, so
InfluxDB stamps the point on arrival, as such scripts usually do. Kept deliberately plain: it is
the baseline, not a straw man; it only adds counters, printed as JSON on SIGTERM, so the bench
can report bytes and failures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import paho.mqtt.client as paho
import requests
from paho.mqtt.enums import CallbackAPIVersion


class Forwarder:
    def __init__(self, influx_url: str, database: str) -> None:
        self.url = influx_url.rstrip("/") + "/write?" + urlencode({"db": database})
        self.stats = {"posted": 0, "ok": 0, "failed": 0, "body_bytes": 0, "request_bytes": 0}

    def post(self, body: bytes) -> None:
        self.stats["posted"] += 1
        self.stats["body_bytes"] += len(body)
        try:
            resp = requests.post(self.url, data=body, timeout=10)
            self.stats["ok" if resp.status_code < 300 else "failed"] += 1
            self.stats["request_bytes"] += len(body) + header_bytes(resp.request)
        except requests.RequestException:
            self.stats["failed"] += 1


def header_bytes(request: requests.PreparedRequest) -> int:
    line = f"{request.method!s} {request.path_url} HTTP/1.1\r\n"
    headers = "".join(f"{k!s}: {v!s}\r\n" for k, v in request.headers.items())
    return len(line) + len(headers) + 2


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
    print(json.dumps(forwarder.stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
