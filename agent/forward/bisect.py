"""Halving a refused write until its bad lines stand alone (DESIGN §2: 413 split, 400/422
bisect). The outputs run every refused batch through it, and the dead-letter replay the lines it
sends back, so both find the same bad lines the same way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.forward.classify import Action, Outcome
from agent.forward.http import encode_body


@dataclass(slots=True)
class Ends:
    """What sending a refused batch's first and last line alone showed."""

    rest: list[bytes]
    accepted: list[bytes] = field(default_factory=list)
    refused: list[tuple[bytes, Outcome]] = field(default_factory=list)
    request_level: bool = False


Answer = tuple[Outcome, Ends | None]
# Sends these lines until the answer is final for them: SUCCESS, SPLIT or BISECT.
Send = Callable[[list[bytes]], Awaitable[Answer]]
# One attempt with this body, whatever the answer.
Post = Callable[[bytes], Awaitable[Outcome]]
Refused = list[tuple[bytes, Outcome]]


async def deliver(
    lines: list[bytes],
    send: Send,
    refused: Refused,
    accepted: Callable[[int], None],
    answer: Answer | None = None,
) -> None:
    """Deliver every line, or add it to ``refused``; ``accepted`` is told each count that got
    through. ``answer``: what the server said to these very lines, sent whole already."""
    if answer is None:
        answer = await send(lines)
    outcome, ends = answer
    if outcome.action is Action.SUCCESS:
        accepted(len(lines))
        return
    if ends is not None:
        accepted(len(ends.accepted))
        refused.extend(ends.refused)
        lines = ends.rest
        if not lines:
            return
    # SPLIT or BISECT: halve until the offending lines stand alone.
    if len(lines) == 1:
        refused.append((lines[0], outcome))
        return
    mid = len(lines) // 2
    await deliver(lines[:mid], send, refused, accepted)
    await deliver(lines[mid:], send, refused, accepted)


async def probe_ends(lines: list[bytes], outcome: Outcome, post: Post, level: int) -> Ends:
    """Is a 400/422 about the request rather than its lines? Then the first and the last
    line, each sent alone, are refused with the very message of the whole batch (a missing
    org, a proxy's page); a bad line is named in the message, or the other one passes.
    Dead-lettering on such an answer would set aside the whole stream, batch after batch.
    A probe's answer is final for its line, so no line is sent twice."""
    ends = Ends(rest=lines)
    for line in (lines[0], lines[-1]):
        alone = await post(await encode_body([line], level))
        if alone.action is Action.SUCCESS:
            ends.accepted.append(line)
        elif alone.action in (Action.BISECT, Action.SPLIT):
            ends.refused.append((line, alone))
        else:
            break  # a retryable answer says nothing: the bisection retries these lines
    settled = len(ends.accepted) + len(ends.refused)
    ends.rest = lines[1:-1] if settled == 2 else lines[settled:]
    ends.request_level = len(ends.refused) == 2 and all(
        refusal.message == outcome.message for _, refusal in ends.refused
    )
    return ends
