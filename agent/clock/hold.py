"""Readings received while the wall clock is not trusted: how they are held, and how they are
placed on the wall clock once it is. Pure byte work, so every rule is tested without a spool.

They are committed (and so acknowledged) like any reading, but to a held stream of the spool,
one per boot (``held:<boot id>``), that no output reads. The agent's own telemetry points are
held the same way, in ``held:<boot id>:telemetry``, and placed into the ``telemetry`` stream.
Each line is marked:

- ``B``: stamped from the boot clock, which never steps. Placed by adding the offset between the
  wall clock and the boot clock at the moment the wall clock is trusted: the exact wall time of
  its arrival, however far the clock stepped in between. A boot clock means nothing in another
  boot, so a ``B`` line of an earlier boot whose clock was never confirmed cannot be placed: it is
  set aside as a dead letter (``clock_unplaceable``), never sent with a guessed time.
- ``W``: the payload's own timestamp, kept; checked against the sanity bounds once there is a
  clock to check it against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent.parse.clock import TimestampRejected, check_bounds

PREFIX = "held:"
BOOT_STAMPED = b"B "
OWN_STAMP = b"W "


def stream_of(boot: int, target: str = "raw") -> str:
    """The held stream of ``boot`` whose lines are placed into ``target`` (readings: raw)."""
    return f"{PREFIX}{boot}" if target == "raw" else f"{PREFIX}{boot}:{target}"


def boot_of(stream: str) -> int | None:
    """The boot a held stream belongs to; None for any other stream."""
    if not stream.startswith(PREFIX):
        return None
    return int(stream[len(PREFIX) :].partition(":")[0])


def target_of(stream: str) -> str | None:
    """The stream a held stream's lines are placed into; None for any other stream."""
    if not stream.startswith(PREFIX):
        return None
    return stream[len(PREFIX) :].partition(":")[2] or "raw"


def placed_into(streams: Iterable[str], target: str) -> list[str]:
    """The held streams among ``streams`` whose lines are placed into ``target``."""
    return [stream for stream in streams if target_of(stream) == target]


def label(stream: str) -> str:
    """A stream as metrics name it: held streams are per boot, the metrics call them all "held"
    (readings) or "held_<target>" (the agent's telemetry)."""
    target = target_of(stream)
    if target is None:
        return stream
    return "held" if target == "raw" else f"held_{target}"


def mark(lines: Sequence[bytes], boot_stamped: Sequence[bool]) -> list[bytes]:
    """One message's lines for the held stream; ``boot_stamped``: for each line, in order,
    whether the boot clock stamped it (else the timestamp came from the payload)."""
    return [
        (BOOT_STAMPED if boot else OWN_STAMP) + line
        for line, boot in zip(lines, boot_stamped, strict=True)
    ]


@dataclass(slots=True)
class Placed:
    lines: list[bytes] = field(default_factory=list)
    rejected: list[tuple[bytes, str, str]] = field(default_factory=list)  # line, reason, error


def place(body: bytes, offset: int | None, now: int, max_future: int, max_past: int) -> Placed:
    """The held chunk ``body`` on the wall clock: ``offset`` (wall - boot, ns) for a chunk of
    this boot, None for one of an earlier boot; ``now`` and the bounds check payload stamps."""
    out = Placed()
    for held in body.split(b"\n"):
        kind, line = held[:2], held[2:]
        head, _, stamp = line.rpartition(b" ")
        if kind == BOOT_STAMPED:
            if offset is None:
                out.rejected.append(
                    (
                        line,
                        "clock_unplaceable",
                        "received in an earlier boot whose wall clock was never confirmed; the "
                        "timestamp counts ns since that boot",
                    )
                )
                continue
            out.lines.append(head + b" " + str(int(stamp) + offset).encode())
            continue
        try:
            check_bounds(int(stamp), now, max_future, max_past)
        except TimestampRejected as exc:
            out.rejected.append((line, exc.reason, str(exc)))
            continue
        out.lines.append(line)
    return out
