"""MqttProxy: a fault *double* between an MQTT client and a real broker, for tests only.

Everything goes to the real broker (mosquitto) and back unchanged, except that on demand it
swallows the client's PUBACK and UNSUBSCRIBE packets. That stands for "the client sent its
PUBACK, but the broker never processed it" (the broker died, or the link broke, before reading
it), which no real broker can be made to do on demand. UNSUBSCRIBE goes too because it is the
agent's barrier: an UNSUBACK would prove the PUBACKs before it were processed.

The client-to-broker stream is cut into MQTT packets (fixed header byte, remaining length of
one to four 7-bit bytes, body), because a client may write many packets in one send (the agent
queues a commit's PUBACKs as one write) and a packet may span two reads. The broker-to-client
stream is copied as it comes. One thread accepts, two per connection copy; ``drop`` cuts every
connection, as a network failure would, and ``stop`` also closes the listener.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter

LOOPBACK = "127.0.0.1"
PUBACK = 4
UNSUBSCRIBE = 10
SWALLOWABLE = frozenset({PUBACK, UNSUBSCRIBE})


class MalformedPacketError(Exception):
    pass


def take_packets(buffer: bytearray) -> list[bytes]:
    """Remove the complete packets at the head of ``buffer`` and return them; a partial packet
    stays for the next read."""
    packets: list[bytes] = []
    while (end := _packet_end(buffer)) is not None:
        packets.append(bytes(buffer[:end]))
        del buffer[:end]
    return packets


def _packet_end(buffer: bytearray) -> int | None:
    length = 0
    for i in range(1, 5):
        if i >= len(buffer):
            return None
        length |= (buffer[i] & 0x7F) << (7 * (i - 1))
        if not buffer[i] & 0x80:
            end = i + 1 + length
            return end if len(buffer) >= end else None
    raise MalformedPacketError("remaining length longer than four bytes")


class MqttProxy:
    """Listens on a free loopback port (``url``) and forwards to ``upstream_port``. Set
    ``swallow`` to discard the client's PUBACKs and UNSUBSCRIBEs from then on; ``swallowed``
    counts them by packet type."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.swallow = False
        self.swallowed: Counter[int] = Counter()
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self._acceptor.start()

    def drop(self) -> None:
        """Cut every connection both ways; new ones are still accepted."""
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopping.set()
        self._acceptor.join(10)
        self._listener.close()
        self.drop()
        for thread in self._threads:
            thread.join(10)

    def _spawn(self, *args: object) -> None:
        thread = threading.Thread(target=self._pump, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            try:
                upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open |= {client, upstream}
            self._spawn(client, upstream, True)
            self._spawn(upstream, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        buffer = bytearray()
        try:
            while data := source.recv(65536):
                if from_client:
                    buffer += data
                    data = b"".join(self._keep(take_packets(buffer)))
                if data:
                    sink.sendall(data)
        except (OSError, MalformedPacketError):
            pass
        finally:
            self._close(source, sink)

    def _keep(self, packets: list[bytes]) -> list[bytes]:
        kept = []
        for packet in packets:
            kind = packet[0] >> 4
            if self.swallow and kind in SWALLOWABLE:
                with self._lock:
                    self.swallowed[kind] += 1
            else:
                kept.append(packet)
        return kept

    def _close(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                if sock in self._open:
                    self._open.discard(sock)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
