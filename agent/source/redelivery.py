"""Telling a broker's redelivery of an already-committed message from a new message.

A QoS 1 message is acknowledged only after its reading is committed, so a crash between the
commit and the PUBACK makes the broker send it again (same packet id, DUP set) on the next
connection. Storing it again would give the same reading a second receive timestamp: a
duplicate point. So each commit also records (packet id, connection, digest of topic+payload)
for the messages it holds, and erases the records of messages acknowledged since the last one.

Why a match can never swallow a new reading:
- Only a message with DUP set is checked, and only against a record from an *earlier*
  connection. Within one connection a broker never resends (MQTT 3.1.1 §4.4, 5.0 §4.4), so
  every message on the live connection whose record is from this connection is new.
- A broker may give packet id X to a new message only after it has received our PUBACK for the
  previous X. That PUBACK is sent after the commit that wrote X's record, and the record is
  erased by the first commit after the PUBACK. A new message under X that arrives before that
  erasing commit shares the connection with it (or the connection dropped and it is never
  acknowledged, so the broker has not freed X); it is committed in the same or a later
  transaction, which replaces X's record with its own.
- The digest must match too: a different topic or payload is always new.
The remaining window, a new message reusing X with byte-identical topic and payload whose
commit is cut by a crash while the previous X's erasing commit is too, needs the broker to
reuse an id within one group commit; mosquitto allocates ids sequentially (65,535 before a
reuse) while at most ``receive_maximum`` are in flight, so it cannot occur with it.
"""

from __future__ import annotations

import hashlib


def digest(topic: str, payload: bytes) -> bytes:
    return hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=12).digest()


class RedeliveryGuard:
    def __init__(self, records: dict[int, tuple[int, bytes]]) -> None:
        self._records = records
        self._acked: list[int] = []
        self.connection = 0

    def start_connection(self, connection: int) -> None:
        self.connection = connection

    def is_redelivery(self, mid: int, dup: bool, message_digest: bytes) -> bool:
        if not dup:
            return False
        record = self._records.get(mid)
        return record is not None and record[0] < self.connection and record[1] == message_digest

    def remember(self, records: list[tuple[int, int, bytes]]) -> None:
        """Records (packet id, connection, digest) that a commit has just made durable."""
        for mid, connection, message_digest in records:
            self._records[mid] = (connection, message_digest)

    def acked(self, mid: int) -> None:
        self._records.pop(mid, None)
        self._acked.append(mid)

    def take_acked(self) -> list[int]:
        """Packet ids acknowledged since the last commit, whose records that commit erases."""
        acked, self._acked = self._acked, []
        return acked
