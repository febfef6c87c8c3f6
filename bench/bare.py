"""The ceiling: a plain paho-mqtt subscriber that only counts QoS 1 messages (auto-ack).

Whatever the agent does per message (parse, commit, forward) comes on top of this, so its rate
and CPU per message are the yardstick. It prints ``connected <t>`` and ``done <t>`` (t from
``time.monotonic()``, comparable across processes on Linux), ``seen <n> <t>`` on SIGUSR1 (for a
measured window of a steady stream, bench/steady.py) and its final count on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SESSION_EXPIRY = 3600
RECEIVE_MAXIMUM = 2000  # the agent's default, so both get the same broker window


def connect_properties() -> Properties:
    """v5 CONNECT properties: a session that outlives the connection and the agent's window."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    return props


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--filter", required=True, help="MQTT topic filter to subscribe to")
    p.add_argument("--expect", type=int, required=True, help="print 'done' at this many")
    args = p.parse_args(argv)

    count = 0

    def on_connect(client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        print(f"connected {time.monotonic():.6f} {reason}", flush=True)
        client.subscribe(args.filter, qos=1)

    def on_message(_c: paho.Client, _u: Any, _m: paho.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count == args.expect:
            print(f"done {time.monotonic():.6f}", flush=True)

    def on_usr1(_signum: int, _frame: Any) -> None:
        print(f"seen {count} {time.monotonic():.6f}", flush=True)

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=paho.MQTTv5
    )
    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop: KeyboardInterrupt
    signal.signal(signal.SIGUSR1, on_usr1)
    parts = urlsplit(args.url)
    client.connect(
        parts.hostname or "127.0.0.1",
        parts.port or 1883,
        clean_start=False,
        properties=connect_properties(),
    )
    with contextlib.suppress(KeyboardInterrupt):
        client.loop_forever()
    print(f"count {count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
