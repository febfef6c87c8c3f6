"""``edge-agent simulate``: a plant's sensors publishing to a broker, for demos, soak and bench.

Each sensor is a slow random walk around a set point with a little noise, like the real thing,
published as a bare number (format "value") at QoS 1 to
``<prefix>/<line>/sensor/<sensor>/<measurement>``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

MAX_UNACKED = 20_000
MEASUREMENTS = {
    "temperature": (65.0, 0.2),
    "pressure": (4.2, 0.01),
    "vibration": (1.5, 0.05),
    "humidity": (40.0, 0.1),
}


@dataclass(slots=True)
class Sensor:
    topic: str
    measurement: str
    value: float
    step: float

    def read(self, rng: random.Random) -> float:
        centre = MEASUREMENTS[self.measurement][0]
        self.value += rng.gauss(0, self.step) + (centre - self.value) * 0.01
        return round(self.value, 3)


def make_sensors(prefix: str, lines: int, sensors: int, seed: int) -> list[Sensor]:
    rng = random.Random(seed)
    out = []
    names = list(MEASUREMENTS)
    for line in range(1, lines + 1):
        for n in range(1, sensors + 1):
            measurement = names[(n - 1) % len(names)]
            centre, step = MEASUREMENTS[measurement]
            out.append(
                Sensor(
                    f"{prefix}/line-{line}/sensor/s{n:03d}/{measurement}",
                    measurement,
                    centre + rng.uniform(-1, 1) * step * 10,
                    step,
                )
            )
    return out


class Publisher:
    """A paho client on its own network thread, counting PUBACKs so 'published' means accepted."""

    def __init__(self, url: str, client_id: str, qos: int, max_inflight: int = 1000) -> None:
        parts = urlsplit(url)
        self.qos = qos
        self.acked = 0
        self.sent = 0
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        if parts.scheme == "mqtts":
            self.client.tls_set()
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()

    def _on_publish(self, *_args: object) -> None:
        with self._lock:
            self.acked += 1

    def publish(self, topic: str, payload: str) -> None:
        # paho's packet ids wrap at 65,535: more unacknowledged publishes than that collide.
        if self.qos and self.sent - self.acked >= MAX_UNACKED:
            self.wait_acked(self.sent - MAX_UNACKED // 2, timeout=60)
        self.client.publish(topic, payload, qos=self.qos)
        self.sent += 1

    def wait_acked(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.acked >= count:
                return True
            time.sleep(0.01)
        return self.acked >= count

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run(args: argparse.Namespace) -> int:
    sensors = make_sensors(args.prefix, args.lines, args.sensors, args.seed)
    publisher = Publisher(args.url, f"edge-sim-{args.seed}", args.qos)
    rng = random.Random(args.seed)
    per_round = len(sensors)
    interval = per_round / args.rate if args.rate > 0 else 0.0
    sent = 0
    counts: dict[str, int] = {}
    deadline = time.monotonic() + args.duration if args.duration else None
    next_round = time.monotonic()
    try:
        while (args.count is None or sent < args.count) and (
            deadline is None or time.monotonic() < deadline
        ):
            for sensor in sensors:
                if args.count is not None and sent >= args.count:
                    break
                publisher.publish(sensor.topic, repr(sensor.read(rng)))
                counts[sensor.measurement] = counts.get(sensor.measurement, 0) + 1
                sent += 1
            if interval:
                next_round += interval
                time.sleep(max(0.0, next_round - time.monotonic()))
    except KeyboardInterrupt:
        pass
    ok = publisher.wait_acked(sent, timeout=60)
    publisher.close()
    summary = {"published": sent, "acknowledged": publisher.acked, "by_measurement": counts}
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary))
    print(json.dumps(summary), file=sys.stderr if args.summary else sys.stdout)
    return 0 if ok else 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulate", help="publish simulated plant sensor readings to a broker")
    p.add_argument("--url", default="mqtt://127.0.0.1:1883", help="broker URL")
    p.add_argument("--prefix", default="plant", help="first topic segment")
    p.add_argument("--lines", type=int, default=2, help="production lines")
    p.add_argument("--sensors", type=int, default=8, help="sensors per line")
    p.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="messages per second in total (0 = as fast as possible)",
    )
    p.add_argument(
        "--duration", type=float, default=0.0, help="seconds to run (0 = until --count or Ctrl-C)"
    )
    p.add_argument("--count", type=int, default=None, help="stop after this many messages")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--summary", help="write the counts as JSON to this file")
    p.set_defaults(handler=run)
