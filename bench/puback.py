"""PUBACK latency on the wire, measured the same way for any MQTT consumer.

dumpcap captures the broker port the consumer uses (the bench gives publishers a listener of
their own, so only the consumer's packets are seen), and tshark decodes every MQTT packet of each
TCP segment: the agent acknowledges a whole commit in one socket write. Each broker-to-consumer
PUBLISH is matched with the consumer's next PUBACK of the same packet id. A message that waits
at the broker for a free slot of the consumer's receive window is not in this figure; the most
PUBLISHes in flight shows whether the window was ever full.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.run import LineReader, stop

PUBLISH, PUBACK = 3, 4
Packet = tuple[float, bool, int, int]  # epoch time, sent by the broker, MQTT type, packet id


@dataclass(frozen=True)
class Latency:
    """PUBACK minus PUBLISH for the PUBLISHes sent within a window. ``publishes`` counts them:
    the readings the consumer was handed in the window, the same way for every consumer and
    not in steps of a commit."""

    publishes: int
    p50_ms: float | None
    p99_ms: float | None
    matched: int
    unanswered: int
    max_in_flight: int
    capture_dropped: int | None


class Capture:
    """dumpcap on loopback, one broker port, into a pcapng file; stopped when ``stack`` closes
    at the latest."""

    def __init__(self, stack: contextlib.ExitStack, port: int, path: Path) -> None:
        self.port, self.path = port, path
        argv = ["dumpcap", "-q", "-i", "lo", "-B", "32", "-f", f"tcp port {port}", "-w", str(path)]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        stack.callback(stop, self.proc)
        assert self.proc.stderr is not None
        self.err = LineReader(self.proc.stderr)
        if self.err.wait_for("Capturing on", time.monotonic() + 10) is None:
            stop(self.proc)
            raise RuntimeError(f"dumpcap did not start capturing: {self.err.rest(1)}")
        self.dropped: int | None = None

    def stop(self) -> None:
        """Stop capturing; keep the count of packets the kernel dropped, when dumpcap says."""
        stop(self.proc)
        for line in self.err.rest():
            found = re.search(r"received/dropped on interface .*: (\d+)/(\d+)", line)
            if found:
                self.dropped = int(found.group(2))

    def packets(self) -> Iterator[Packet]:
        """Every PUBLISH and PUBACK, each PDU of a segment on its own, in capture order."""
        argv = ["tshark", "-r", str(self.path), "-d", f"tcp.port=={self.port},mqtt"]
        argv += ["-Y", f"mqtt.msgtype == {PUBLISH} || mqtt.msgtype == {PUBACK}", "-T", "fields"]
        argv += ["-e", "frame.time_epoch", "-e", "tcp.srcport", "-e", "mqtt.msgtype"]
        argv += ["-e", "mqtt.msgid", "-E", "occurrence=a", "-E", "aggregator=,"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            when, src, types, ids = line.split("\t")
            kinds, numbers = types.split(","), ids.split(",") if ids else []
            if len(kinds) != len(numbers):
                continue  # a PDU without a packet id in the segment: no safe pairing
            for kind, number in zip(kinds, numbers, strict=True):
                yield float(when), int(src) == self.port, int(kind), int(number)

    def latency(self, w0: float, w1: float) -> Latency:
        return puback_latency(self.packets(), w0, w1, self.dropped)


def puback_latency(packets: Iterator[Packet], w0: float, w1: float, dropped: int | None) -> Latency:
    """Each PUBLISH to the consumer sent within [w0, w1] against the consumer's next PUBACK of
    the same packet id (an id is reused once acknowledged)."""
    sent: dict[int, float] = {}
    waits: list[float] = []
    most = publishes = 0
    for when, from_broker, kind, mid in packets:
        if from_broker and kind == PUBLISH:
            sent[mid] = when
            if w0 <= when <= w1:
                publishes += 1
                most = max(most, len(sent))
        elif not from_broker and kind == PUBACK and mid in sent:
            published = sent.pop(mid)
            if w0 <= published <= w1:
                waits.append(when - published)
    unanswered = sum(1 for when in sent.values() if w0 <= when <= w1)
    if len(waits) < 2:
        return Latency(publishes, None, None, len(waits), unanswered, most, dropped)
    cuts = statistics.quantiles(waits, n=100, method="inclusive")
    p50, p99 = 1000 * cuts[49], 1000 * cuts[98]
    return Latency(publishes, p50, p99, len(waits), unanswered, most, dropped)
