"""Telling a broker's redelivery of an already-committed message from a new message.

A QoS 1 message is acknowledged only after its reading is committed, so a crash (or a broker
restart) between the commit and the broker processing our PUBACK makes the broker send it again
on the next connection, with the same packet id and DUP set (mosquitto keeps both across its own
restarts). Storing it again would give the reading a second receive timestamp: a duplicate
point. So each commit also records (packet id, connection, digest of topic + payload) for the
messages it acknowledges.

A record is kept until it is proven settled at the broker. Having sent the PUBACK proves
nothing (the broker may die before reading it), and neither does the broker's flow control
(mosquitto 2.0.11 ignores Receive Maximum once acknowledgements flow). The proof is a barrier:
an UNSUBSCRIBE queued on the same connection after the PUBACKs. A broker reads a connection in
order, so its UNSUBACK means it has processed every PUBACK before it.

A redelivery that matches is acknowledged again, so it is recorded again, under the live
connection and the commit that acknowledges it (replacing its old record): that PUBACK is as
unproven as the first, so only a barrier of this connection may erase the record. The old
record would not last: the purge (below) erases it at the connection's first new message, and
a crash before the broker has read the new PUBACK would bring the message back once more with
nothing to match it. Crash loops are exactly when that happens.

Why a match can never swallow a new reading:
- Only a message with DUP set is checked. Within one connection a broker never resends (MQTT
  3.1.1 and 5.0, §4.4), and a new message is sent with DUP clear.
- The record must come from an earlier connection and carry the same topic and payload.
- Records of earlier connections are purged at the first message of the new connection that is
  not a redelivery: brokers resend the unacknowledged messages first and in order, so no
  redelivery can follow it. The redeliveries matched before it are recorded under the new
  connection by then, so the purge spares them; when both fall in one commit, the spool purges
  before it writes the commit's records.
- Between two barriers, the broker cannot give a new message the packet id of a record that is
  still unsettled unless it has read our PUBACK for it. A new message under that id that is
  not committed before a crash, and is then redelivered with identical topic and payload, would
  be matched. That needs the broker to reuse an id within one barrier round trip (a few
  milliseconds); mosquitto allocates ids sequentially (65,535 before a reuse), so with it this
  cannot happen.
"""

from __future__ import annotations

import hashlib

DIGEST_SIZE = 12


def digest(topic: str, payload: bytes) -> bytes:
    """Of the topic as received (the ack shim decodes bytes that are not UTF-8 as escapes)."""
    raw = topic.encode("utf-8", "surrogateescape")
    return hashlib.blake2b(raw + b"\0" + payload, digest_size=DIGEST_SIZE).digest()


class RedeliveryGuard:
    """Only the records of earlier connections are held in memory (the candidates, loaded from
    the spool when a connection starts). The records of the live connection exist only in the
    spool, each stamped with the number of the commit that wrote it, so a barrier settles them
    with one number: constant memory, however long the backlog drained before its UNSUBACK
    (mosquitto 2.0.11 queues it behind the whole backlog)."""

    def __init__(self) -> None:
        self._candidates: dict[int, tuple[int, bytes]] = {}
        self._commits = 0  # commits of the live connection whose PUBACKs are queued
        self._barrier_from = 0  # commits covered by a barrier already sent
        self._settled = 0  # commits proven processed by the broker
        self._reported = 0  # of those, already handed to the spool for erasure
        self._purge = False
        self.connection = 0

    def start_connection(self, connection: int, records: dict[int, tuple[int, bytes]]) -> None:
        """``records``: every record in the spool; those of earlier connections are candidates."""
        self.connection = connection
        self._candidates = {m: r for m, r in records.items() if r[0] < connection}
        self._commits = self._barrier_from = self._settled = self._reported = 0

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

    @property
    def next_commit(self) -> int:
        """The number the next commit stamps its records with (per connection, from 1)."""
        return self._commits + 1

    def committed(self, commit: int) -> None:
        """Commit ``commit`` is durable and its PUBACKs are about to be queued."""
        self._commits = commit

    def begin_barrier(self) -> int | None:
        """The last commit whose PUBACKs are queued, if a barrier sent now would settle more."""
        if self._commits <= self._barrier_from:
            return None
        self._barrier_from = self._commits
        return self._commits

    def end_barrier(self, through: int) -> None:
        self._settled = max(self._settled, through)

    def barrier_failed(self) -> None:
        """The next barrier will cover the commits this one did."""
        self._barrier_from = self._settled

    def take_settled(self) -> tuple[int | None, int | None]:
        """For the next commit: the live connection's records up to which commit to erase (a
        record replaced since by a newer message has a newer number and stays), and the
        connection below which every record is to be purged (None: nothing)."""
        settled = self._settled if self._settled > self._reported else None
        self._reported = self._settled
        purge = self.connection if self._purge else None
        self._purge = False
        return settled, purge
