"""A plant's steady stream: ``rate`` sensors reading once a second each, evenly paced, QoS 1.

Run as its own process by bench/steady.py, so that publishing never competes with the measured
consumer for a GIL. The stream is deterministic (``readings``): the bench regenerates it to
compute the exact line-protocol bytes of the readings a consumer handled in its window.

Prints ``started <t>`` (``time.monotonic()``) when the first reading is due, and at the end of
``--seconds`` or on SIGTERM a JSON line: readings published, acknowledged by the broker, and the
worst lateness behind the schedule, which says whether the pacing held.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from agent.tools.simulate import Publisher, make_sensors

LINES = 10  # production lines; sensors per line = rate / LINES
MIN_SLEEP = 0.001  # at high rates, publish the few readings that fell due per wakeup
ACK_WAIT = 10.0


def readings(prefix: str, rate: int, seed: int = 1) -> Iterator[tuple[str, str]]:
    """(topic, payload) of every reading in publishing order: sensor after sensor, round after
    round, so each of the ``rate`` sensors reads at 1 Hz."""
    sensors = make_sensors(prefix, LINES, max(1, rate // LINES), seed)
    rng = random.Random(seed)
    for sensor in itertools.cycle(sensors):
        yield sensor.topic, repr(sensor.read(rng))


@dataclass
class Stop:
    """Set by SIGTERM. A flag, not an exception: one raised between a publish and its count
    would leave the count one short of what the broker got. Not a threading.Event either: one
    set from a signal handler can deadlock on its own lock."""

    requested: bool = False

    def request(self, *_: object) -> None:
        self.requested = True


def pace(
    publisher: Publisher, stream: Iterator[tuple[str, str]], rate: int, seconds: float, stop: Stop
) -> dict[str, float]:
    """Publish reading i at ``start + i / rate`` until ``seconds`` have passed or a stop."""
    total = int(rate * seconds)
    late = 0.0
    start = time.monotonic()
    print(f"started {start:.6f}", flush=True)
    while publisher.sent < total and not stop.requested:
        now = time.monotonic()
        late = max(late, now - (start + publisher.sent / rate))
        due = min(total, int((now - start) * rate) + 1)
        for topic, payload in itertools.islice(stream, due - publisher.sent):
            publisher.publish(topic, payload)
        time.sleep(max(start + publisher.sent / rate - time.monotonic(), MIN_SLEEP))
    return {"published": publisher.sent, "late_max_s": late, "seconds": time.monotonic() - start}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="broker URL")
    p.add_argument("--client-id", required=True)
    p.add_argument("--prefix", required=True, help="first topic segment")
    p.add_argument("--rate", type=int, required=True, help="readings per second")
    p.add_argument("--seconds", type=float, required=True, help="stop after this long at most")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    stop = Stop()
    signal.signal(signal.SIGTERM, stop.request)
    publisher = Publisher(args.url, args.client_id, qos=1)
    try:
        stream = readings(args.prefix, args.rate, args.seed)
        summary = pace(publisher, stream, args.rate, args.seconds, stop)
        publisher.wait_acked(int(summary["published"]), ACK_WAIT)
    finally:
        publisher.close()
    print(json.dumps({**summary, "acked": publisher.acked}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
