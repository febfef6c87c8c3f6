"""``edge-agent status``: what waits to be sent, for how long, and whether it is leaving.

Two sources, each for what it knows best. The spool (read-only, beside the agent or without
it) holds the persisted facts: each output's backlog from its cursor on disk, the first unsent
line's timestamp, the spool's size. A running agent's status endpoint adds the live ones: MQTT
connected, each output's health and last accepted write, drops since it started. Drops and
last successes are not persisted, so a stopped agent's status says so instead of guessing.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.clock.hold import PREFIX as HELD
from agent.config import Config, OutputSection, load_config
from agent.ops import render, running
from agent.ops.readonly import Reader, start_of
from agent.ops.render import Result
from agent.ops.times import NS, line_time
from agent.spool.chunks import Position

STALL_AFTER = 60.0  # seconds without an accepted write, lines waiting, before it is a problem


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    config_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser(
        "status", help="backlog, health and spool budget, with the agent running or not"
    )
    config_arg(p)
    render.add_json_arg(p)
    p.set_defaults(handler=lambda args: render.run("status", args, collect, text))


def collect(args: argparse.Namespace) -> Result:
    return gather(load_config(args.config), time.time())


def gather(cfg: Config, now: float) -> Result:
    data_dir = cfg.agent.data_dir
    pid = running.lock_holder(data_dir)
    live: running.Live | None = None
    live_error = None
    base = running.endpoint(cfg.status)
    if pid is not None and cfg.status.enabled:
        try:
            live = running.ask(base)
        except (OSError, ValueError, KeyError) as exc:
            live_error = str(exc)
    with Reader(data_dir / "spool.db") as spool:
        outputs = [_output(spool, out, live, now) for out in cfg.outputs]
        spool_facts = _spool(spool, cfg, live)
    agent: dict[str, Any] = {
        "name": cfg.agent.name,
        "running": pid is not None,
        "pid": pid,
        "status_endpoint": base if cfg.status.enabled else None,
        "live": live is not None,
        "ready": None if live is None else live.ready,
        "not_ready_because": None if live is None else live.problems,
        "mqtt_connected": None if live is None else live.value("edge_mqtt_connected") == 1,
    }
    drops = None if live is None else live.by("edge_readings_dropped_total", "reason")
    problems = _problems(cfg, data_dir, pid, live, live_error, outputs, spool_facts)
    return {
        "ok": not problems,
        "command": "status",
        "time": render.rfc3339(now),
        "agent": agent,
        "spool": spool_facts,
        "drops_since_start": drops,
        "outputs": outputs,
        "problems": problems,
    }


def _output(spool: Reader, out: OutputSection, live: running.Live | None, now: float) -> Result:
    streams: dict[str, Any] = {}
    starts: dict[str, Position] = {}
    with spool.snapshot():
        cursors = spool.cursors()
        ranges = spool.streams()
        last_id = spool.last_id()
        for stream in out.streams:
            cursor = cursors.get((out.name, stream))
            starts[stream] = cursor or start_of(ranges.get(stream), last_id)
            lines, size = spool.backlog(stream, starts[stream])
            streams[stream] = {
                "lines": lines,
                "bytes": size,
                "cursor": None if cursor is None else {"chunk": cursor.chunk, "line": cursor.line},
            }
    stamps = [
        line_time(line)
        for stream, pos in starts.items()
        if streams[stream]["lines"] and (line := spool.first_line(stream, pos)) is not None
    ]
    oldest = min((s for s in stamps if s is not None), default=None)
    oldest_s = None if oldest is None else oldest / NS
    lines = sum(f["lines"] for f in streams.values())
    last_success = None
    if live is not None:
        last_success = live.value("edge_output_last_success_timestamp_seconds", output=out.name)
    health, problem = output_health(out.name, lines, last_success, live, now)
    return {
        "name": out.name,
        "lines": lines,
        "bytes": sum(f["bytes"] for f in streams.values()),
        "oldest": render.rfc3339(oldest_s),
        "oldest_age_s": None if oldest_s is None else round(now - oldest_s, 3),
        "last_success": render.rfc3339(last_success),
        "last_success_age_s": None if last_success is None else round(now - last_success, 3),
        "health": health,
        "problem": problem,
        "streams": streams,
    }


def output_health(
    name: str, lines: int, last_success: float | None, live: running.Live | None, now: float
) -> tuple[str, str | None]:
    """ok, unhealthy (the agent says so: a configuration error), stalled (lines wait and no
    write was accepted for STALL_AFTER, or none since start while writes fail), or unknown
    (no live facts)."""
    if live is None:
        return "unknown", None
    said = live.problems.get(f"output:{name}") or live.problems.get(f"output:{name}:disk")
    if said:
        return "unhealthy", said
    if not lines:
        return "ok", None
    failures = {
        outcome: n
        for outcome, n in live.by("edge_output_requests_total", "outcome", output=name).items()
        if not outcome.startswith("2") and n
    }
    unanswered = live.value("edge_output_probes_total", output=name, result="none") or 0
    if last_success is None:
        if not failures and not unanswered:
            return "ok", None
        since = "since the agent started"
    elif now - last_success > STALL_AFTER:
        since = f"for {render.ago(now - last_success)}"
    else:
        return "ok", None
    tried = [f"{outcome} x{n:g}" for outcome, n in sorted(failures.items())]
    if unanswered:
        tried.append(f"no answer to {unanswered:g} pings")
    return "stalled", (
        f"{lines} lines wait and no write was accepted {since}"
        + (f" ({', '.join(tried)})" if tried else "")
    )


def _spool(spool: Reader, cfg: Config, live: running.Live | None) -> Result:
    ranges = spool.streams()
    path = spool.path
    stored = sum(r.stored for r in ranges.values())
    state = None
    if live is not None:
        state = round(sum(live.by("edge_aggregate_state_bytes", "aggregation").values()))
    used = stored + (state or 0)
    return {
        "path": str(path),
        "file_bytes": _file_size(path),
        "stored_bytes": stored,
        "state_bytes": state,
        "max_size": cfg.spool.max_size,
        "used_pct": round(100 * used / cfg.spool.max_size, 1) if cfg.spool.max_size else None,
        "when_full": cfg.spool.when_full,
        "held_lines": sum(r.lines for s, r in ranges.items() if s.startswith(HELD)),
        "streams": {
            s: {"chunks": r.chunks, "lines": r.lines, "stored_bytes": r.stored}
            for s, r in sorted(ranges.items())
        },
    }


def _file_size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += path.with_name(path.name + suffix).stat().st_size
    return total


def _problems(
    cfg: Config,
    data_dir: Path,
    pid: int | None,
    live: running.Live | None,
    live_error: str | None,
    outputs: list[Result],
    spool: Result,
) -> list[str]:
    found = []
    if pid is None:
        found.append(
            f"the agent is not running (no process holds {data_dir / running.LOCK_NAME}); "
            "the figures are what its spool holds"
        )
    elif live_error is not None:
        found.append(
            f"the agent runs (pid {pid}) but its status endpoint "
            f"{running.endpoint(cfg.status)} did not answer: {live_error}"
        )
    if live is not None and not live.ready:
        found.extend(f"not ready: {part}: {why}" for part, why in sorted(live.problems.items()))
    found.extend(f"output {o['name']}: {o['problem']}" for o in outputs if o["health"] == "stalled")
    used = spool["stored_bytes"] + (spool["state_bytes"] or 0)
    if used > spool["max_size"]:
        found.append(
            f"the spool holds {render.size(used)}, over its budget max_size = "
            f"{render.size(spool['max_size'])}"
        )
    return found


def text(result: Result) -> str:
    agent = result["agent"]
    out = [f"agent {agent['name']!r}: "]
    if not agent["running"]:
        out.append("not running\n")
    elif not agent["live"]:
        out.append(f"running (pid {agent['pid']}), no live facts\n")
    else:
        ready = "ready" if agent["ready"] else "NOT READY"
        mqtt = "connected" if agent["mqtt_connected"] else "NOT connected"
        out.append(f"running (pid {agent['pid']}), {ready}, MQTT {mqtt}\n")
    spool = result["spool"]
    used = spool["stored_bytes"] + (spool["state_bytes"] or 0)
    out.append(
        f"spool {spool['path']}: {render.size(used)} of {render.size(spool['max_size'])} "
        f"({spool['used_pct']}%), when full: {spool['when_full']}"
        + (f", {spool['held_lines']} readings held for the clock" if spool["held_lines"] else "")
        + "\n"
    )
    drops = result["drops_since_start"]
    if drops is None:
        out.append("drops: not known (counted by the running agent only; see its log)\n")
    else:
        counted = ", ".join(f"{r} {n:g}" for r, n in sorted(drops.items()) if n) or "none"
        out.append(f"drops since start: {counted}\n")
    rows = [["output", "health", "backlog", "bytes", "oldest unsent", "last success"]]
    for o in result["outputs"]:
        oldest = "-"
        if o["oldest"] is not None:
            oldest = f"{o['oldest']} ({render.ago(o['oldest_age_s'])} ago)"
        success = "-" if not agent["live"] else render.when(None)
        if o["last_success"] is not None:
            success = f"{o['last_success']} ({render.ago(o['last_success_age_s'])} ago)"
        rows.append(
            [o["name"], o["health"], str(o["lines"]), render.size(o["bytes"]), oldest, success]
        )
    out.append(render.table(rows))
    out.append(render.problems_text(result))
    return "".join(out)
