"""Telling a broker's redelivery of an already-committed message from a new message.

A QoS 1 message is acknowledged only after its reading is committed, so a crash (or a broker
restart) between the commit and the broker processing our PUBACK makes the broker send it again
on the next connection, with the same packet id and DUP set (mosquitto keeps both across its own
restarts). Storing it again would give the reading a second receive timestamp: a duplicate
point. So each commit also records (packet id, connection, digest of topic + payload) for the
messages it holds.

A record is kept until it is proven settled at the broker. Having sent the PUBACK proves
nothing (the broker may die before reading it), and neither does the broker's flow control
(mosquitto 2.0.11 ignores Receive Maximum once acknowledgements flow). The proof is a barrier:
an UNSUBSCRIBE queued on the same connection after the PUBACKs. A broker reads a connection in
order, so its UNSUBACK means it has processed every PUBACK before it.

Why a match can never swallow a new reading:
- Only a message with DUP set is checked. Within one connection a broker never resends (MQTT
  3.1.1 and 5.0, §4.4), and a new message is sent with DUP clear.
- The record must come from an earlier connection and carry the same topic and payload.
- Records of earlier connections are purged at the first message of the new connection that is
  not a redelivery: brokers resend the unacknowledged messages first and in order, so no
  redelivery can follow it.
- Between two barriers, the broker cannot give a new message the packet id of a record that is
  still unsettled unless it has read our PUBACK for it. A new message under that id that is
  not committed before a crash, and is then redelivered with identical topic and payload, would
  be matched. That needs the broker to reuse an id within one barrier round trip (a few
  milliseconds); mosquitto allocates ids sequentially (65,535 before a reuse), so with it this
  cannot happen.
"""

from __future__ import annotations

import hashlib


def digest(topic: str, payload: bytes) -> bytes:
    return hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=12).digest()


class RedeliveryGuard:
    def __init__(self, records: dict[int, tuple[int, bytes]]) -> None:
        self._records = records
        self._unsettled: list[tuple[int, bytes]] = []
        self._settled: list[int] = []
        self._purge = False
        self.connection = 0
        self.in_redelivery_phase = False

    def start_connection(self, connection: int) -> None:
        self.connection = connection
        self._unsettled.clear()
        self.in_redelivery_phase = any(c < connection for c, _ in self._records.values())

    def is_redelivery(self, mid: int, dup: bool, message_digest: bytes) -> bool:
        """Checks one QoS>0 message, in receive order; the first miss ends the redelivery phase."""
        if not self.in_redelivery_phase:
            return False
        record = self._records.get(mid)
        if (
            dup
            and record is not None
            and record[0] < self.connection
            and record[1] == message_digest
        ):
            return True
        self.in_redelivery_phase = False
        self._purge = True
        self._records = {m: r for m, r in self._records.items() if r[0] >= self.connection}
        return False

    def remember(self, records: list[tuple[int, int, bytes]]) -> None:
        """Records (packet id, connection, digest) that a commit has just made durable."""
        for mid, connection, message_digest in records:
            self._records[mid] = (connection, message_digest)
            self._unsettled.append((mid, message_digest))

    def begin_barrier(self) -> list[tuple[int, bytes]]:
        """The records whose PUBACKs are already queued: the next barrier settles them."""
        pending, self._unsettled = self._unsettled, []
        return pending

    def end_barrier(self, pending: list[tuple[int, bytes]]) -> None:
        for mid, message_digest in pending:
            if self._records.get(mid) == (self.connection, message_digest):
                del self._records[mid]
                self._settled.append(mid)

    def barrier_failed(self, pending: list[tuple[int, bytes]]) -> None:
        self._unsettled[:0] = pending

    def take_settled(self) -> tuple[list[int], int | None]:
        """For the next commit: packet ids whose records to erase, and the connection below
        which every record is to be purged (None: no purge)."""
        settled, self._settled = self._settled, []
        purge = self.connection if self._purge else None
        self._purge = False
        return settled, purge
