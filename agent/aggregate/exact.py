"""Exact running statistics of one field in one window.

Sums are kept as exact binary fractions (an integer over a power of two: every float is one), so
an aggregate is a function of the set of readings in its window, not of their arrival order. A
window rebuilt after a crash from a redelivered, reordered backlog is therefore bit-for-bit the
one an uninterrupted run would have sent, and each value is correctly rounded: ``mean`` equals
``statistics.mean``, ``sum`` equals ``math.fsum``, ``stddev`` equals ``statistics.stdev``.
"""

from __future__ import annotations

import math
from typing import Any

FUNCTIONS = ("mean", "min", "max", "count", "sum", "first", "last", "stddev")
_SQRT_BITS = 2 * 53 + 3


class Accumulator:
    """Count, exact sum and sum of squares, extremes, and the earliest and latest reading.

    ``first``/``last`` are by timestamp; a tie is broken by value, so they too do not depend on
    arrival order."""

    __slots__ = ("count", "first", "hi", "last", "lo", "s1", "s1_exp", "s2", "s2_exp")

    def __init__(self) -> None:
        self.count = 0
        self.s1 = self.s1_exp = 0  # sum = s1 / 2**s1_exp
        self.s2 = self.s2_exp = 0  # sum of squares = s2 / 2**s2_exp
        self.lo = math.inf
        self.hi = -math.inf
        self.first: tuple[int, float] | None = None
        self.last: tuple[int, float] | None = None

    def add(self, ts: int, value: float) -> None:
        num, den = value.as_integer_ratio()
        exp = den.bit_length() - 1
        if exp > self.s1_exp:
            self.s1 <<= exp - self.s1_exp
            self.s1_exp = exp
        self.s1 += num << (self.s1_exp - exp)
        exp2 = 2 * exp
        if exp2 > self.s2_exp:
            self.s2 <<= exp2 - self.s2_exp
            self.s2_exp = exp2
        self.s2 += (num * num) << (self.s2_exp - exp2)
        self.count += 1
        if value < self.lo:
            self.lo = value
        if value > self.hi:
            self.hi = value
        point = (ts, value)
        if self.first is None or point < self.first:
            self.first = point
        if self.last is None or point > self.last:
            self.last = point

    def result(self, function: str) -> float | int | None:
        """The value of one aggregate function; None where it is undefined (stddev of one) or
        beyond a float (the sum of two readings near 1e308), which line protocol cannot carry."""
        try:
            value = self._result(function)
        except OverflowError:
            return None
        return value if value is None or math.isfinite(value) else None

    def _result(self, function: str) -> float | int | None:
        if function == "count":
            return self.count
        if self.count == 0:
            return None
        if function == "mean":
            return self.s1 / (self.count << self.s1_exp)
        if function == "sum":
            return self.s1 / (1 << self.s1_exp)
        if function == "min":
            return self.lo
        if function == "max":
            return self.hi
        if function == "first":
            return self.first[1] if self.first else None
        if function == "last":
            return self.last[1] if self.last else None
        if function == "stddev":
            return self._stddev()
        raise ValueError(f"unknown aggregate function {function!r}")

    def _stddev(self) -> float | None:
        """Sample standard deviation (n - 1), as Flux's and ``statistics.stdev``'s default."""
        n = self.count
        if n < 2:
            return None
        exp = max(self.s2_exp, 2 * self.s1_exp)
        squares = self.s2 << (exp - self.s2_exp)
        square_of_sum = self.s1 * self.s1 << (exp - 2 * self.s1_exp)
        spread = n * squares - square_of_sum
        return sqrt_of_fraction(spread, n * (n - 1) << exp)

    def dump(self) -> list[Any]:
        return [
            self.count,
            self.s1,
            self.s1_exp,
            self.s2,
            self.s2_exp,
            self.lo,
            self.hi,
            list(self.first) if self.first else None,
            list(self.last) if self.last else None,
        ]

    @classmethod
    def load(cls, data: list[Any]) -> Accumulator:
        acc = cls()
        acc.count, acc.s1, acc.s1_exp, acc.s2, acc.s2_exp, acc.lo, acc.hi = data[:7]
        acc.lo, acc.hi = float(acc.lo), float(acc.hi)
        acc.first = (int(data[7][0]), float(data[7][1])) if data[7] else None
        acc.last = (int(data[8][0]), float(data[8][1])) if data[8] else None
        return acc


def sqrt_of_fraction(num: int, den: int) -> float:
    """sqrt(num / den) correctly rounded: an integer root rounded to odd on 2p + 3 bits, which a
    single final conversion to float then rounds correctly (Boldo and Melquiond)."""
    if num <= 0:
        return 0.0
    shift = (num.bit_length() - den.bit_length() - _SQRT_BITS) // 2
    if shift >= 0:
        den <<= 2 * shift
    else:
        num <<= -2 * shift
    root = math.isqrt(num // den)
    root |= root * root * den != num
    return root * 2.0**shift if shift >= 0 else root / (1 << -shift)
