"""``python -m bench.hotspots FILE``: the agent's hot functions from py-spy collapsed stacks.

Prints, per ``file:function``, the share of samples spent in it (self) and under it
(inclusive), so a profile can be read without a flame-graph viewer.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_key(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``to/file.py:func``: lines merged, paths shortened."""
    found = _FRAME.match(frame.strip())
    if found is None:
        return frame.strip()
    path = found["file"]
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{found['func']}"


def summarise(text: str) -> tuple[int, Counter[str], Counter[str]]:
    total, own, under = 0, Counter[str](), Counter[str]()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        keys = [frame_key(f) for f in stack.split(";")]
        total += samples
        own[keys[-1]] += samples
        for key in set(keys):
            under[key] += samples
    return total, own, under


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("file", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    total, own, under = summarise(args.file.read_text(errors="replace"))
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    for title, counter in (("self", own), ("inclusive", under)):
        print(f"\n## {title} (% of {total} samples)")
        for key, samples in counter.most_common(args.top):
            print(f"{100 * samples / total:6.1f}%  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
