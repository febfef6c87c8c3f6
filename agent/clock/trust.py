"""Whether the wall clock may stamp readings: pure decisions, times passed in.

A Raspberry Pi has no real-time clock. It boots in 1970, or at its last shutdown time with
fake-hwclock, and NTP steps it once the link is up, which may be hours later. Readings stamped
before that step are wrong for good. So the wall clock is trusted only once something confirms it
in this boot:

- the kernel reports it synchronised (an NTP client disciplines it), or
- a server the agent writes to answers with a ``Date`` header within ``max_skew`` of it (a VM or a
  gateway with a good RTC and no NTP client is confirmed by its first answer), or
- it was confirmed earlier in this same boot (an agent restart) and has not stepped since.

Trust is lost when the clock steps (its offset from the boot clock jumps by more than
``max_skew`` between two looks) without the kernel saying it is synchronised; a step made by NTP
is followed. While the clock is not trusted, readings are stamped from the boot clock and held
(agent/clock/hold.py). Holding costs nothing while the link is down, which is when a clock cannot
be confirmed: the readings could not be sent anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NS = 1_000_000_000
DATE_RESOLUTION = 1.0  # an HTTP Date header has whole seconds


@dataclass(frozen=True, slots=True)
class Sample:
    """The wall clock and the boot clock read together, in ns."""

    wall: int
    boot: int

    @property
    def offset(self) -> int:
        return self.wall - self.boot


Event = Literal["trusted", "distrusted", "stepped"]


class ClockTrust:
    def __init__(self, mode: Literal["verify", "system"], max_skew: float, boot: int) -> None:
        self.mode = mode
        self.max_skew = int(max_skew * NS)
        self.boot = boot
        self.trusted = mode == "system"
        self.offset: int | None = None  # wall - boot when last looked at, while trusted
        self.confirmed_by = "configuration (clock.trust = system)" if self.trusted else ""
        self.problem = "" if self.trusted else "not yet confirmed by NTP or by a server's clock"
        self.step = 0  # ns of the last step seen

    def restore(self, boot: int, offset: int, now: Sample) -> bool:
        """Trust a confirmation persisted earlier in this boot, if the clock has not stepped."""
        if self.trusted or boot != self.boot or abs(now.offset - offset) > self.max_skew:
            return False
        self._trust(now, "an earlier confirmation in this boot")
        return True

    def observe(self, now: Sample, synchronised: bool | None) -> Event | None:
        """Look at the clocks (at every commit and every second); returns what changed."""
        if self.mode == "system":
            return None
        if self.trusted:
            assert self.offset is not None
            step = now.offset - self.offset
            self.offset = now.offset
            if abs(step) <= self.max_skew:
                return None
            self.step = step
            if synchronised:
                return "stepped"
            self.trusted = False
            self.problem = (
                f"the wall clock stepped by {step / NS:+,.1f} s and the kernel does not report it "
                "synchronised"
            )
            return "distrusted"
        if synchronised:
            self._trust(now, "the kernel (NTP synchronised)")
            return "trusted"
        return None

    def server_time(self, server: float, sent: Sample, answered: Sample, name: str) -> Event | None:
        """A server's ``Date`` (epoch seconds) seen between ``sent`` and ``answered``."""
        if self.trusted:
            return None
        skew = self.max_skew / NS
        early = sent.wall / NS - DATE_RESOLUTION - skew
        late = answered.wall / NS + skew
        if early <= server <= late:
            self._trust(answered, f"the clock of {name}")
            return "trusted"
        ahead = answered.wall / NS - server
        self.problem = (
            f"the wall clock is {ahead:+,.0f} s off {name}'s clock and the kernel does not report "
            "it synchronised; readings are held until NTP sets it"
        )
        return None

    def _trust(self, now: Sample, by: str) -> None:
        self.trusted = True
        self.offset = now.offset
        self.confirmed_by = by
        self.problem = ""
