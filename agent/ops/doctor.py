"""``edge-agent doctor``: is the config valid, does the broker let the agent in and keep its
session, can every output be written to; each finding with a one-line fix.

Nothing it does changes what the agent relies on. It writes no point (see forward/probe.py).
While an agent runs on the data dir, the broker is asked with a client id of the doctor's own:
connecting as the agent would throw the running agent off the broker. The running agent's
session is then read from its status endpoint (/readyz). With no agent running, the doctor
connects as the agent would (its client id, clean start false, its session expiry) to read
whether the broker still holds the session, and leaves it as it found it (source/probe.py).
Every step is bounded by CHECK_SECONDS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from agent.config import Config, ConfigError, MQTTSection, OutputSection, StatusSection, load_config
from agent.forward.classify import Action
from agent.forward.probe import PLAIN, VICTORIAMETRICS, ServerLook, error_text
from agent.ops import running
from agent.ops.render import CannotRun, Result, UsageError, run
from agent.redact import Redactor
from agent.source.probe import BrokerAnswer

CHECK_SECONDS = 5.0
OK, FAIL, SKIP = "ok", "fail", "skip"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # OK, FAIL or SKIP
    detail: str = ""
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Agent:
    """What the doctor knows of an agent on the data dir."""

    pid: int | None  # None: none runs (or ``unknown``)
    unknown: str = ""  # why it cannot tell whether one runs: then it assumes one does
    has_run: bool = True  # the data dir has a spool: the agent connected at least once

    @property
    def running(self) -> bool:
        return self.pid is not None or bool(self.unknown)


def main(args: argparse.Namespace) -> int:
    return run("doctor", args, collect, text)


def collect(args: argparse.Namespace) -> Result:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    checks = [Check("config valid", OK, str(args.config))]
    checks += asyncio.run(_look(cfg))
    result = {
        "ok": not any(c.status == FAIL for c in checks),
        "config": str(args.config),
        "checks": [asdict(c) for c in checks],
        "problems": [f"{c.name}: {c.detail}" for c in checks if c.status == FAIL],
    }
    redacted: Result = Redactor(cfg.secrets()).value(result)
    return redacted


async def _look(cfg: Config) -> list[Check]:
    from agent.forward import probe as output_probe
    from agent.source import probe as broker_probe

    agent = _agent(cfg.agent.data_dir)
    client_id = cfg.mqtt.client_id if not agent.running else f"{cfg.mqtt.client_id}-doctor"
    broker = asyncio.to_thread(
        broker_probe.look, cfg.mqtt, client_id, not agent.running, CHECK_SECONDS
    )
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        ready = _readiness(cfg.status, session) if agent.running else _nothing()
        answer, readiness, *looks = await asyncio.gather(
            broker,
            ready,
            *(output_probe.look(o, session, CHECK_SECONDS) for o in cfg.outputs),
        )
    checks = broker_checks(cfg.mqtt, agent, answer, readiness, cfg.status)
    for output, seen in zip(cfg.outputs, looks, strict=True):
        checks += output_checks(output, seen)
    return checks


async def _nothing() -> None:
    return None


def _agent(data_dir: Path) -> Agent:
    """Whether an agent holds the data dir's lock (running.lock_holder); when that cannot be
    told, the doctor assumes one does and leaves its broker session alone."""
    has_run = (data_dir / "spool.db").exists()
    try:
        return Agent(running.lock_holder(data_dir), has_run=has_run)
    except CannotRun as exc:
        return Agent(None, unknown=str(exc))


async def _readiness(status: StatusSection, session: aiohttp.ClientSession) -> dict[str, Any]:
    """/readyz of the running agent; {"error": ...} when it does not answer."""
    if not status.enabled:
        return {"error": "[status] enabled = false"}
    url = f"{running.endpoint(status)}/readyz"
    try:
        async with session.get(
            url, headers=PLAIN, timeout=aiohttp.ClientTimeout(total=CHECK_SECONDS)
        ) as response:
            answer: dict[str, Any] = json.loads(await response.read())
            return answer
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        return {"error": f"{url} did not answer ({type(exc).__name__})"}


# -- judgement: pure, so every case is tested without sockets -----------------------------------


def broker_checks(
    mqtt: MQTTSection,
    agent: Agent,
    answer: BrokerAnswer,
    readiness: dict[str, Any] | None,
    status: StatusSection,
) -> list[Check]:
    reach, auth, session = "mqtt reachable", "mqtt authenticated", "mqtt session present"
    who = f"as {mqtt.username!r}" if mqtt.username else "anonymously"
    checks: list[Check] = []
    if answer.error:
        tls = "TLS" in answer.error
        fix = (
            "set [mqtt.tls] ca_file to the CA that signed the broker's certificate, or fix the "
            "host in [mqtt] url"
            if tls
            else "check [mqtt] url (host, port, mqtt:// or mqtts://) and that the broker runs"
        )
        checks.append(Check(reach, FAIL, f"{mqtt.url}: {answer.error}", fix))
        checks.append(Check(auth, SKIP, "the broker did not answer"))
    else:
        checks.append(Check(reach, OK, mqtt.url))
        if answer.refused:
            fix = "check [mqtt] username and password (password_file), and the broker's ACL"
            checks.append(Check(auth, FAIL, f"the broker refused {who}: {answer.refused}", fix))
        else:
            checks.append(Check(auth, OK, f"connected {who}"))
    checks.append(_session_check(session, mqtt, agent, answer, readiness, status))
    return checks


def _session_check(
    name: str,
    mqtt: MQTTSection,
    agent: Agent,
    answer: BrokerAnswer,
    readiness: dict[str, Any] | None,
    status: StatusSection,
) -> Check:
    if agent.running:
        who = f"the running agent (pid {agent.pid})" if agent.pid else "an agent"
        if agent.unknown:
            who = f"{who}: assumed to run, {agent.unknown}"
        if readiness is None or "error" in readiness:
            why = readiness["error"] if readiness else "no answer"
            fix = f"check [status] listen ({status.listen}); run the doctor as the agent's user"
            return Check(name, SKIP, f"{who}; its status endpoint: {why}", fix)
        problem = readiness.get("problems", {}).get("mqtt")
        if problem:
            fix = "see the mqtt checks above and the agent's log (journalctl -u edge-agent)"
            return Check(name, FAIL, f"{who} reports: {problem}", fix)
        return Check(name, OK, f"{who} is connected with client id {mqtt.client_id!r}")
    if answer.error or answer.refused:
        return Check(name, SKIP, "not connected")
    if answer.session_present:
        return Check(name, OK, f"the broker keeps the session of {mqtt.client_id!r}")
    if not agent.has_run:
        return Check(name, SKIP, "no session yet: the agent has not run with this data dir")
    return Check(
        name,
        FAIL,
        f"the broker holds no session for {mqtt.client_id!r}: what was published while the "
        "agent was away was not kept for it",
        "enable persistence in the broker, keep the agent away for less than [mqtt] "
        "session_expiry, and keep client_id unique; the agent subscribes again as it starts",
    )


def output_checks(cfg: OutputSection, seen: ServerLook) -> list[Check]:
    prefix = f"output {cfg.name}:"
    v1 = cfg.api == "v1"
    store = "database" if v1 else "bucket"
    names = [f"{prefix} {n}" for n in ("reachable", "authenticated", f"{store} exists")]
    names.append(f"{prefix} write permitted")
    if seen.ping.failed is not None:
        failed = seen.ping.failed
        fix = (
            "set tls_ca_file to the CA that signed the server's certificate, or fix the host in url"
            if failed.label == "tls_error"
            else "check url (host, port, http or https) and that the server runs"
        )
        return [
            Check(names[0], FAIL, f"{cfg.url}: {failed.message}", fix),
            *(Check(n, SKIP, "not reachable") for n in names[1:]),
        ]
    server = f"InfluxDB {seen.ping.version}" if seen.ping.version else "no InfluxDB version"
    if seen.kind == VICTORIAMETRICS:
        server = "VictoriaMetrics"
    write = seen.write
    status = write.status if write is not None else None
    said = error_text(write.message) if write is not None else ""
    credentials = "username and password (password_file)" if v1 else "token (token_file)"
    checks = [Check(names[0], OK, f"{cfg.url} ({server})")]

    listing = seen.listing
    if status == 401 or (listing is not None and listing.status == 401):
        why = said if status == 401 else listing.message if listing else ""
        fix = f"check {credentials} of output {cfg.name!r}"
        checks.append(Check(names[1], FAIL, f"HTTP 401: {why}", fix))
    elif seen.kind == VICTORIAMETRICS:
        checks.append(Check(names[1], SKIP, "VictoriaMetrics checks no credentials"))
    elif (listing is not None and listing.status == 200) or _accepted(seen):
        who = f"user {cfg.username!r} is accepted" if v1 else "the token is accepted"
        if v1 and not cfg.username:
            who = "the server asks for no credentials"
        checks.append(Check(names[1], OK, who))
    else:
        checks.append(Check(names[1], SKIP, f"could not tell: {said or _listing_said(seen)}"))

    where = f"database {cfg.database!r}" if v1 else f"bucket {cfg.bucket!r}"
    if status == 404:
        fix = (
            f"create it (influx -execute 'CREATE DATABASE \"{cfg.database}\"') or fix database"
            if v1
            else f"create bucket {cfg.bucket!r} in org {cfg.org!r} or fix bucket and org"
        )
        checks.append(Check(names[2], FAIL, f"HTTP 404: {said}", fix))
    elif seen.kind == VICTORIAMETRICS:
        checks.append(Check(names[2], SKIP, f"VictoriaMetrics has no {store}s"))
    elif listing is not None and (cfg.database if v1 else cfg.bucket) in listing.names:
        checks.append(Check(names[2], OK, f"{where} is listed"))
    elif status == 403 or _accepted(seen):
        checks.append(Check(names[2], OK, f"{where} exists (the write endpoint found it)"))
    else:
        checks.append(Check(names[2], SKIP, f"could not tell: {said or _listing_said(seen)}"))

    if _accepted(seen):
        checks.append(Check(names[3], OK, "an empty write was accepted (no point written)"))
    elif status == 403:
        fix = (
            f'GRANT WRITE ON "{cfg.database}" TO "{cfg.username}"'
            if v1
            else f"give the token write permission on bucket {cfg.bucket!r}"
        )
        checks.append(Check(names[3], FAIL, f"HTTP 403: {said}", fix))
    elif status in (401, 404):
        checks.append(Check(names[3], SKIP, "see above"))
    else:
        answer = f"HTTP {status}: {said}" if status else said
        fix = "see the server's answer and its log"
        checks.append(Check(names[3], FAIL, f"an empty write was refused: {answer}", fix))
    return checks


def _accepted(seen: ServerLook) -> bool:
    """InfluxDB 2.x reads the body only once token, bucket and permission passed: its 400 for
    an empty body is a yes."""
    write = seen.write
    if write is None:
        return False
    if write.action is Action.SUCCESS:
        return True
    return write.status == 400 and "writing requires points" in write.message


def _listing_said(seen: ServerLook) -> str:
    return seen.listing.message if seen.listing is not None else "no answer"


# -- text ----------------------------------------------------------------------------------------


def text(result: Result) -> str:
    checks = result["checks"]
    width = max(len(c["name"]) for c in checks)
    lines = []
    for c in checks:
        mark = {"ok": "ok  ", "fail": "FAIL", "skip": "skip"}[c["status"]]
        lines.append(f"{mark}  {c['name']:<{width}}  {c['detail']}".rstrip())
        if c["status"] != OK and c["fix"]:
            lines.append(f"      {'':<{width}}  fix: {c['fix']}")
    failed = sum(c["status"] == FAIL for c in checks)
    lines.append(
        f"{len(checks)} checks, {failed} failed" if failed else f"{len(checks)} checks, all good"
    )
    return "\n".join(lines) + "\n"
