"""What the kernel knows about time: whether NTP has synchronised the wall clock, which boot this
is, and a clock that never steps. Linux facts read through libc; elsewhere each says so (None) and
the caller falls back to what the servers' clocks say."""

from __future__ import annotations

import ctypes
import ctypes.util
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class _Timex(ctypes.Structure):
    """struct timex (Linux, any word size): only ``status`` is read; the tail pads the rest."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


def _libc_adjtimex() -> Callable[[Any], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        func = ctypes.CDLL(name, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.POINTER(_Timex)]
    func.restype = ctypes.c_int
    adjtimex: Callable[[Any], int] = func
    return adjtimex


_ADJTIMEX = _libc_adjtimex()


def synchronised() -> bool | None:
    """True once an NTP client (chrony, systemd-timesyncd, ntpd) has disciplined the wall clock;
    False while the kernel flags it unsynchronised (the state after boot on a Raspberry Pi without
    an RTC); None where the kernel cannot tell (not Linux, or the call is refused)."""
    if _ADJTIMEX is None:
        return None
    timex = _Timex()  # modes = 0: read only
    state = _ADJTIMEX(ctypes.byref(timex))
    if state < 0:
        return None
    return state != _TIME_ERROR and not timex.status & _STA_UNSYNC


def boot_id() -> int:
    """This boot's identity as a number (the spool's meta table holds integers). A boottime
    stamp means something only within the boot that took it."""
    try:
        text = _BOOT_ID.read_text().strip()
    except OSError:
        return 0
    try:
        return uuid.UUID(text).int >> 66
    except ValueError:
        return 0


def boottime_ns() -> int:
    """Nanoseconds since boot, counting suspend, never stepped by NTP or by hand."""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return time.clock_gettime_ns(clock)
