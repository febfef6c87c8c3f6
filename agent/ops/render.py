"""How every operator command answers: one result dict, shown as JSON or as text, and an exit code.

A command is ``collect(args) -> dict`` plus ``text(dict) -> str``; ``run`` does the rest. The
dict carries ``ok`` (False: the command ran and found a problem) and ``problems`` (sentences for
a person); everything else is the command's own. ``--json`` prints the dict as it is, so scripts
and people read the same facts.

Exit codes, the same for every operator command:

- 0: ran, all good
- 1: ran, and found a problem (unhealthy, integrity failure, ...): the output says which
- 2: bad config or usage (``edge-agent`` returns it on any ConfigError or argparse error)
- 3: could not run (the spool is missing or unreadable, a time limit passed)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

OK, PROBLEM, USAGE, CANNOT_RUN = 0, 1, 2, 3

Result = dict[str, Any]


class CannotRun(Exception):
    """What the command was asked to look at cannot be read: exit 3, with this message."""


class UsageError(Exception):
    """Options that contradict each other or values that cannot be read: exit 2."""


def add_json_arg(
    parser: argparse.ArgumentParser, help: str = "print the result as one JSON object on stdout"
) -> None:
    parser.add_argument("--json", action="store_true", help=help)


def run(
    name: str,
    args: argparse.Namespace,
    collect: Callable[[argparse.Namespace], Result],
    text: Callable[[Result], str],
    out: TextIO | None = None,
) -> int:
    """Collect, print (JSON or text) on ``out`` (stdout unless the command writes its data
    there) and return the exit code. A failure to run is printed on stderr, and with ``--json``
    also as ``{"ok": false, "error": ...}`` on ``out``."""
    out = sys.stdout if out is None else out
    try:
        result = collect(args)
    except (CannotRun, UsageError) as exc:
        code = CANNOT_RUN if isinstance(exc, CannotRun) else USAGE
        print(f"edge-agent {name}: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "exit": code}), file=out)
        return code
    if args.json:
        print(json.dumps(result, indent=2), file=out)
    else:
        print(text(result), end="", file=out)
    return OK if result["ok"] else PROBLEM


def when(epoch: float | None) -> str:
    """An RFC 3339 UTC time to the second, or "never"."""
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339(epoch: float | None) -> str | None:
    return None if epoch is None else when(epoch)


def ago(seconds: float | None) -> str:
    """An age for a person, in its largest unit and the next: "3d 4h", "12m 5s", "40s"."""
    if seconds is None:
        return "-"
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    left = max(0, round(seconds))
    for i, (unit, length) in enumerate(units[:-1]):
        if left >= length:
            lower, lower_length = units[i + 1]
            rest = left % length // lower_length
            return f"{left // length}{unit}" + (f" {rest}{lower}" if rest else "")
    return f"{left}s"


def size(n: int | None) -> str:
    """Bytes for a person: "512 B", "3.4 MiB"."""
    if n is None:
        return "-"
    value, unit = float(n), "B"
    for larger in ("KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, larger
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def table(rows: list[list[str]], indent: str = "  ") -> str:
    """Left-aligned columns; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines) + "\n"


def problems_text(result: Result) -> str:
    """The closing lines every command's text ends with: its problems, or that there are none."""
    found: list[str] = result["problems"]
    if not found:
        return "no problems found\n"
    return "".join(f"PROBLEM: {p}\n" for p in found)
