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
import io
from array import array

DIGEST_SIZE = 12


def digest(topic: str, payload: bytes) -> bytes:
    return hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=DIGEST_SIZE).digest()


Pending = tuple["array[int]", bytes]
"""Packet ids, and their digests end to end (DIGEST_SIZE bytes each): compact, as a backlog
drained before a barrier returns can hold hundreds of thousands (mosquitto 2.0.11 queues the
UNSUBACK behind the whole backlog)."""


class RedeliveryGuard:
    """Only the records of earlier connections are held in memory (the candidates, loaded from
    the spool when a connection starts); the records of the live connection exist only in the
    spool, plus a compact list of those awaiting a barrier (14 bytes each)."""

    def __init__(self) -> None:
        self._candidates: dict[int, tuple[int, bytes]] = {}
        self._pending_mids = array("H")
        self._pending_digests = io.BytesIO()
        self._settled: list[Pending] = []
        self._purge = False
        self.connection = 0

    def start_connection(self, connection: int, records: dict[int, tuple[int, bytes]]) -> None:
        """``records``: every record in the spool; those of earlier connections are candidates."""
        self.connection = connection
        self._candidates = {m: r for m, r in records.items() if r[0] < connection}
        self._pending_mids = array("H")
        self._pending_digests = io.BytesIO()

    @property
    def in_redelivery_phase(self) -> bool:
        return bool(self._candidates)

    def is_redelivery(self, mid: int, dup: bool, message_digest: bytes) -> bool:
        """Checks one QoS>0 message, in receive order; the first miss ends the redelivery phase."""
        if not self._candidates:
            return False
        record = self._candidates.get(mid)
        if dup and record is not None and record[1] == message_digest:
            return True
        self._candidates = {}
        self._purge = True
        return False

    def remember(self, records: list[tuple[int, int, bytes]]) -> None:
        """Records (packet id, connection, digest) that a commit has just made durable."""
        for mid, _connection, message_digest in records:
            self._pending_mids.append(mid)
            self._pending_digests.write(message_digest)

    def begin_barrier(self) -> Pending:
        """The records whose PUBACKs are already queued: the next barrier settles them.

        The digests gather in a BytesIO because its ``getvalue`` hands its buffer over as bytes
        without a copy; ``bytes(bytearray)`` doubled them for a moment, at the end of a burst.
        """
        pending = (self._pending_mids, self._pending_digests.getvalue())
        self._pending_mids = array("H")
        self._pending_digests = io.BytesIO()
        return pending

    def end_barrier(self, pending: Pending) -> None:
        if pending[0]:
            self._settled.append(pending)

    def barrier_failed(self, pending: Pending) -> None:
        mids, digests = pending
        self._pending_mids[:0] = mids
        later = self._pending_digests.getvalue()
        self._pending_digests = io.BytesIO()
        self._pending_digests.write(digests)
        self._pending_digests.write(later)

    def take_settled(self) -> tuple[list[Pending], int | None]:
        """For the next commit: (packet id, digest) of records to erase (only if unchanged: an
        id reused since then belongs to a newer message), and the connection below which every
        record is to be purged (None: no purge)."""
        settled, self._settled = self._settled, []
        purge = self.connection if self._purge else None
        self._purge = False
        return settled, purge
