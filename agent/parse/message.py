"""One MQTT message to the line bytes the spool stores, or a PayloadError saying why not.

This is the whole per-message contract of intake: whatever one message can make go wrong (its
size, its format, text that UTF-8 cannot carry, a timestamp outside the bounds) surfaces here as
a PayloadError, so the source sets the message aside, acknowledges it and goes on. The broker can
therefore never hand the agent a message that stops it again after every restart.
"""

from __future__ import annotations

from agent.parse.clock import IngestClock
from agent.parse.payload import MappingRules, PayloadError, map_payload

SAMPLE_BYTES = 1024  # what a dead letter keeps of a payload too large to parse


def map_message(
    rules: MappingRules, topic: str, payload: bytes, clock: IngestClock, max_payload: int
) -> list[str]:
    """A payload over ``max_payload`` bytes is refused before any parsing."""
    if len(payload) > max_payload:
        raise PayloadError(
            "too_large", f"payload of {len(payload):,} bytes is over mqtt.max_payload"
        )
    return map_payload(rules, topic, payload, clock)


def encode_lines(lines: list[str]) -> bytes:
    """Lines joined as the spool stores them. JSON escapes can make text that UTF-8 cannot carry
    (a lone surrogate, ``"\\ud800"``): that is this message's fault, not the spool's."""
    try:
        return "\n".join(lines).encode()
    except UnicodeEncodeError as exc:
        raise PayloadError(
            "unrepresentable",
            f"text that UTF-8 cannot carry ({exc.reason}: {exc.object[exc.start : exc.end]!r}), "
            "e.g. a lone surrogate escape in a JSON key or value",
        ) from None
