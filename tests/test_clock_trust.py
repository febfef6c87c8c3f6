"""When the wall clock may stamp readings (agent/clock/trust.py), with clocks passed in, and how
held readings are placed on it (agent/clock/hold.py)."""

from __future__ import annotations

from agent.clock import hold
from agent.clock.trust import NS, ClockTrust, Sample

BOOT = 42
TODAY = 1_795_000_000 * NS  # late 2026
EPOCH_BOOT = Sample(3 * NS, 3 * NS)  # a Pi without an RTC, 3 s after booting into 1970


def at(wall_s: float, boot_s: float) -> Sample:
    return Sample(int(wall_s * NS), int(boot_s * NS))


def test_a_fresh_boot_is_not_trusted_until_confirmed() -> None:
    trust = ClockTrust("verify", 2.0, BOOT)
    assert not trust.trusted
    assert trust.observe(EPOCH_BOOT, synchronised=False) is None
    assert not trust.trusted and "not yet confirmed" in trust.problem


def test_the_kernel_saying_synchronised_confirms_it() -> None:
    trust = ClockTrust("verify", 2.0, BOOT)
    assert trust.observe(at(1_795_000_000, 60), synchronised=True) == "trusted"
    assert trust.trusted and trust.offset == (1_795_000_000 - 60) * NS
    assert "kernel" in trust.confirmed_by


def test_a_server_date_within_the_skew_confirms_it_and_one_far_off_does_not() -> None:
    trust = ClockTrust("verify", 2.0, BOOT)
    sent, answered = at(1_795_000_000.2, 10.2), at(1_795_000_000.3, 10.3)
    assert trust.server_time(1_795_003_600, sent, answered, "cloud") is None
    assert not trust.trusted and "3,600 s off cloud" in trust.problem
    assert trust.server_time(1_795_000_000, sent, answered, "cloud") == "trusted"
    assert trust.trusted and trust.confirmed_by == "the clock of cloud"


def test_a_step_without_ntp_loses_trust_and_a_step_by_ntp_is_followed() -> None:
    trust = ClockTrust("verify", 2.0, BOOT)
    trust.observe(at(1_795_000_000, 60), synchronised=True)
    assert trust.observe(at(1_795_000_001.5, 61.5), synchronised=False) is None  # no step
    assert trust.observe(at(1_794_996_402, 62), synchronised=True) == "stepped"
    assert trust.trusted and trust.step == -3600 * NS
    assert trust.observe(at(1_795_100_000, 63), synchronised=False) == "distrusted"
    assert not trust.trusted and "stepped by +103,597.0 s" in trust.problem


def test_slow_slewing_is_not_a_step() -> None:
    """chrony slews at up to 83 ms per second: compared look to look, never a step."""
    trust = ClockTrust("verify", 2.0, BOOT)
    trust.observe(at(1_795_000_000, 0), synchronised=True)
    for second in range(1, 200):
        assert trust.observe(at(1_795_000_000 + second * 1.083, second), None) is None
    assert trust.trusted


def test_a_confirmation_of_this_boot_survives_a_restart_unless_the_clock_stepped() -> None:
    now = at(1_795_000_100, 160)
    assert ClockTrust("verify", 2.0, BOOT).restore(BOOT, now.offset + NS, now)
    assert not ClockTrust("verify", 2.0, BOOT).restore(BOOT, now.offset + 5 * NS, now)
    assert not ClockTrust("verify", 2.0, BOOT).restore(BOOT + 1, now.offset, now)


def test_system_mode_trusts_the_wall_clock_as_it_is() -> None:
    trust = ClockTrust("system", 2.0, BOOT)
    assert trust.trusted
    assert trust.observe(EPOCH_BOOT, synchronised=False) is None and trust.trusted


# --- holding and placing ------------------------------------------------------------------------


def test_lines_are_marked_by_where_their_timestamp_came_from() -> None:
    lines = [b"m v=1 7000", b"m v=2 1795000000000000000", b"m v=3 7001"]
    assert hold.mark(lines, [True, False, True]) == [
        b"B m v=1 7000",
        b"W m v=2 1795000000000000000",
        b"B m v=3 7001",
    ]
    assert hold.mark(lines[:1], [True]) == [b"B m v=1 7000"]
    assert hold.mark(lines[1:2], [False]) == [b"W m v=2 1795000000000000000"]


def test_placing_adds_the_offset_at_trust_time_and_checks_payload_stamps() -> None:
    body = b"\n".join(
        [
            b"B m,s=a v=1 3000000000",  # 3 s after boot
            b"W m,s=b v=2 1795000000000000000",
            b"W m,s=c v=3 4102444800000000000",  # 2100
        ]
    )
    offset = TODAY - 600 * NS  # the wall clock read TODAY 600 s after boot
    placed = hold.place(body, offset, TODAY, 300 * NS, 0)
    assert placed.lines == [
        f"m,s=a v=1 {TODAY - 597 * NS}".encode(),
        b"m,s=b v=2 1795000000000000000",
    ]
    [(line, reason, _)] = placed.rejected
    assert (line, reason) == (b"m,s=c v=3 4102444800000000000", "future_timestamp")


def test_boot_stamps_of_an_earlier_boot_are_set_aside_not_guessed() -> None:
    placed = hold.place(b"B m v=1 3000000000\nW m v=2 1795000000000000000", None, TODAY, 0, 0)
    assert placed.lines == [b"m v=2 1795000000000000000"]
    assert [reason for _, reason, _ in placed.rejected] == ["clock_unplaceable"]


def test_held_streams_are_named_per_boot() -> None:
    assert hold.boot_of(hold.stream_of(BOOT)) == BOOT
    assert hold.boot_of("raw") is None
