"""How doctor and dead-letters answer: one result dict, printed as JSON (``--json``) or as text,
and an exit code: 0 all good, 1 ran and found a problem, 2 bad config or usage, 3 could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

OK, PROBLEM, USAGE, CANNOT_RUN = 0, 1, 2, 3

Result = dict[str, Any]


class CannotRun(Exception):
    """What the command needs cannot be reached or read: exit 3, with this message."""


class UsageError(Exception):
    """A config or option the command cannot work with: exit 2."""


def run(
    name: str,
    args: argparse.Namespace,
    collect: Callable[[argparse.Namespace], Result],
    text: Callable[[Result], str],
) -> int:
    """``collect`` returns a dict with ``ok``; False is exit 1."""
    try:
        result = collect(args)
    except (CannotRun, UsageError) as exc:
        code = CANNOT_RUN if isinstance(exc, CannotRun) else USAGE
        print(f"edge-agent {name}: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "exit": code}))
        return code
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(text(result), end="")
    return OK if result["ok"] else PROBLEM


def when(epoch: float | None) -> str:
    """An RFC 3339 UTC time to the second, or "never"."""
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
