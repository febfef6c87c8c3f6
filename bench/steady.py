"""``python -m bench.steady``: what a plant's steady stream costs, beside a bare paho subscriber.

A plant sends a steady stream (1,000 sensors at 1 Hz is 1,000 msg/s), not a burst, and there
the agent's costs are paid per commit and per wakeup. In one run, against a private mosquitto and
InfluxDB 1.x:

1. steady rates (``RATES``) for the bare subscriber (bench/bare.py, auto-ack) and the agent
   (``python -m agent run``, one row per profile in ``PROFILES``), published evenly paced at
   QoS 1 by a separate process (bench/pace.py). After a warm-up, over a measured window: CPU
   (user+sys, /proc/PID/stat), disk bytes written (``write_bytes``, /proc/PID/io; the data dir
   is on a real disk, since tmpfs writes are not counted), the exact line-protocol bytes of the
   readings handled (the agent's own mapping code), PUBACK latency on the wire, peak RSS, and
   for the agent that InfluxDB holds every published reading;
2. the 1,000 msg/s agent run again pinned to one core (``taskset -c 0``), a Pi-class figure;
3. an InfluxDB outage under 5,000 msg/s: seconds from the server answering /ping again to the
   agent's first accepted write, and the drain rate until less than a batch is left unsent;
4. the server's own ingest limit for the same lines, gzipped in the agent's batches and posted
   by parallel keep-alive connections that do nothing else.

For 3 and 4 the server runs on a core of its own and the gateway (broker, agent, the limit's
posters) on the others, the same way for both: a cloud server does not share the gateway's CPU,
and on a 2-core machine a drain that competes with InfluxDB for cores would measure the
sharing, not the agent. The simulated sensors are other devices in the field: their publisher
runs on the server's core, at the same rate during the drain and during the limit run.

PUBACK latency is taken on the wire, the same way for both contenders (bench/puback.py).

Adding a profile (an agent config with extra TOML, e.g. an SD-card setting) is one more entry of
``PROFILES``; its rows and target checks follow.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import itertools
import json
import math
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from agent.config import load_config
from agent.daemon import routes_for
from agent.parse.clock import IngestClock
from agent.parse.payload import MappingRules, map_payload
from agent.tools.localservers import InfluxDB1, Mosquitto, free_port
from bench.bare import SESSION_EXPIRY as BARE_SESSION_EXPIRY
from bench.pace import readings
from bench.puback import Capture, Latency
from bench.run import (
    AGENT_CONFIG,
    AGENT_SESSION_EXPIRY,
    SETTLE,
    LineReader,
    cpu_seconds,
    influx_points,
    mosquitto_version,
    mqtt_session,
    peak_rss_mb,
    say,
    stop,
)


@dataclass(frozen=True)
class Profile:
    """Extra TOML appended to the agent's config (whole tables the template lacks, such as
    ``[spool]``), and its targets at 1,000 msg/s: the most disk bytes per reading it may write,
    as a multiple of the line, and the PUBACK p99 (None: a setting that trades latency for
    fewer writes has no latency target)."""

    toml: str
    disk_vs_line: float
    puback_p99_ms: float | None = None
    env: dict[str, str] = field(default_factory=dict)  # keys of tables the template has


# Agent configs to compare: each adds a row per rate and its own target checks.
PROFILES: dict[str, Profile] = {
    "default": Profile("", disk_vs_line=4.0, puback_p99_ms=250.0),
    # README's Raspberry Pi / SD-card settings: a commit a second, and a receive window that
    # lets a second's messages wait for it.
    "sd-card": Profile(
        '[spool]\ncommit_interval = "1s"\n',
        disk_vs_line=1.0,
        env={"EDGE_MQTT__RECEIVE_MAXIMUM": "4000"},
    ),
}
RATES = (100, 1_000, 5_000)  # msg/s: sensors at 1 Hz
WARMUP = 5.0  # s before the measured window: connections up, caches warm, clock trusted
WINDOW = 20.0  # s measured per row (--seconds)
OUTAGE = 90.0  # s InfluxDB is down (--outage)
OUTAGE_RATE = 5_000  # msg/s during the outage: 90 s of it is a backlog that takes a while
PINNED_RATE = 1_000
PINNED_CPU = "0"
ACK_GRACE = 2.0  # s after the last publish before the capture stops: the last PUBACKs
DELIVERY_TIMEOUT = 60.0  # s for the agent to bring every published reading to InfluxDB
STEADY_SAMPLE = 5.0  # s of steady backlog observed before the outage: what "drained" means
RECOVERY_TIMEOUT = 150.0  # s after the server's return for the agent to drain its backlog
# s between reads of the agent's counters while it recovers. The times come from its
# last-success gauge, read in the same scrape as the counters, so a slower poll costs no
# precision; a faster one made the agent render /metrics 50 times a second during the drain.
DRAIN_POLL = 0.25
LIMIT_THREADS = 4
LIMIT_BATCHES = 200  # batches of batch_size lines posted to measure the server's limit
RESULTS = Path(__file__).resolve().parent / "results" / "steady.json"
RAW = 'edge_readings_committed_total{stream="raw"}'
SENT = "edge_output_lines_sent_total"
LAST_SUCCESS = "edge_output_last_success_timestamp_seconds"
COMMITS = "edge_spool_commit_seconds_count"
CONNECTED = "edge_mqtt_connected"


# -- what is measured -------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """A consumer seen from outside at one instant. ``readings`` is its own count, which says
    which readings of the paced stream a window holds; ``commits`` only for the agent."""

    wall: float
    readings: int
    cpu: float
    written: int
    commits: float | None


@dataclass
class Row:
    """One (contender, rate, profile) over its measured window; ``readings`` are the PUBLISHes
    the broker handed the consumer in it (from the capture)."""

    contender: str
    profile: str
    rate: int
    pinned: bool
    readings: int
    seconds: float
    cpu_seconds: float
    written_bytes: int
    line_per_reading: float
    latency: Latency
    peak_rss_mb: float
    published: int
    delivered: int
    late_max_s: float
    commits: float | None

    @property
    def label(self) -> str:
        return f"{self.contender}, taskset -c {PINNED_CPU}" if self.pinned else self.contender

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.seconds

    @property
    def core_percent(self) -> float:
        return 100 * self.cpu_seconds / self.seconds

    @property
    def cpu_us_per_reading(self) -> float:
        return 1e6 * self.cpu_seconds / self.readings if self.readings else float("nan")

    @property
    def disk_per_reading(self) -> float:
        return self.written_bytes / self.readings if self.readings else float("nan")

    @property
    def disk_vs_line(self) -> float:
        return self.disk_per_reading / self.line_per_reading

    @property
    def readings_per_commit(self) -> float | None:
        return self.readings / self.commits if self.commits else None

    @property
    def exact(self) -> bool:
        return self.delivered == self.published


@dataclass
class Outage:
    """The agent's recovery after InfluxDB was down under a steady stream."""

    seconds: float
    rate: int
    drained_below: int
    backlog_at_return: int
    first_point_s: float | None
    drained_lines: int
    drain_s: float | None
    drain_from_return: float | None
    drain_once_started: float | None
    published: int
    delivered: int

    @property
    def exact(self) -> bool:
        return self.delivered == self.published


@dataclass
class Limit:
    """The server's own ingest rate for the same lines, posted by connections that do only that."""

    lines: int
    seconds: float
    threads: int
    batch_size: int
    body_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.lines / self.seconds


# -- processes --------------------------------------------------------------------------------
def spawn(stack: contextlib.ExitStack, argv: list[str], **popen: Any) -> subprocess.Popen[str]:
    """Start a child that is stopped when ``stack`` closes, also on an error or Ctrl-C. In its
    own session, so a Ctrl-C reaches only the bench, which then stops its children in order."""
    proc = subprocess.Popen(argv, start_new_session=True, text=True, **popen)
    stack.callback(stop, proc)
    return proc


def written_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage (all threads), from /proc/PID/io."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"no write_bytes for pid {pid}")


def scrape(port: int, names: tuple[str, ...]) -> dict[str, float]:
    """Several series of the agent's /metrics in one request; a name without labels sums all."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        for name in names:
            if series == name or ("{" not in name and series.startswith(name + "{")):
                out[name] += float(value)
    return out


class Pacer:
    """bench/pace.py publishing ``rate`` readings per second under ``prefix`` until finished."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        url: str,
        prefix: str,
        rate: int,
        seconds: float,
        cpus: set[int] | None = None,
    ) -> None:
        argv = ["--url", url, "--client-id", f"{prefix}-pub", "--prefix", prefix]
        argv += ["--rate", str(rate), "--seconds", str(seconds)]
        self.proc = spawn(
            stack, [sys.executable, "-m", "bench.pace", *argv], stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        self.out = LineReader(self.proc.stdout)
        started = self.out.wait_for("started", time.monotonic() + 30)
        if started is None:
            raise RuntimeError("the publisher did not start")
        self.started = float(started.split()[1])
        if cpus is not None:
            pin(self.proc.pid, cpus)

    def finish(self) -> dict[str, Any]:
        """Stop publishing; what was published and acknowledged, and how late it ever ran."""
        stop(self.proc)
        for line in self.out.rest():
            if line.startswith("{"):
                summary: dict[str, Any] = json.loads(line)
                if summary["acked"] != summary["published"]:
                    raise RuntimeError(f"the broker did not acknowledge every publish: {summary}")
                return summary
        raise RuntimeError(f"the publisher exited with {self.proc.returncode} and no summary")


class Consumer(Protocol):
    """What a steady run needs of a contender: its pid, a sample, and an end."""

    pid: int

    def sample(self) -> Sample: ...

    def finish(self, published: int) -> int:
        """Stop once every published reading is through; how many arrived."""
        ...


class Bare:
    """bench/bare.py, asked for its count by SIGUSR1."""

    def __init__(self, stack: contextlib.ExitStack, broker: Mosquitto, cid: str) -> None:
        topic_filter = f"{cid}/+/sensor/+/+"
        mqtt_session(broker, cid, True, topic_filter, BARE_SESSION_EXPIRY)
        argv = ["--url", broker.url, "--client-id", cid, "--filter", topic_filter, "--expect", "0"]
        self.proc = spawn(
            stack, [sys.executable, "-m", "bench.bare", *argv], stdout=subprocess.PIPE
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        self.out = LineReader(self.proc.stdout)
        if self.out.wait_for("connected", time.monotonic() + 30) is None:
            raise RuntimeError("the bare subscriber did not connect")

    def sample(self) -> Sample:
        wall = time.time()
        self.proc.send_signal(signal.SIGUSR1)
        seen = self.out.wait_for("seen", time.monotonic() + 5)
        if seen is None:
            raise RuntimeError("the bare subscriber did not report its count")
        count = int(seen.split()[1])
        return Sample(wall, count, cpu_seconds(self.pid), written_bytes(self.pid), None)

    def finish(self, published: int) -> int:
        stop(self.proc)
        counts = [int(line.split()[1]) for line in self.out.rest() if line.startswith("count ")]
        return counts[0] if counts else -1


class Agent:
    """``python -m agent run`` (optionally pinned to one core), read through its /metrics."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        lab: Lab,
        cid: str,
        config: Path,
        status_port: int,
        pinned: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.lab, self.db, self.port = lab, cid, status_port
        lab.influx.create_database(cid)
        mqtt_session(lab.broker, cid, True, f"{cid}/+/sensor/+/+", AGENT_SESSION_EXPIRY)
        self.log = lab.workdir / f"{cid}.log"
        argv = [sys.executable, "-m", "agent", "run", "--config", str(config)]
        if pinned:
            argv = ["taskset", "-c", PINNED_CPU, *argv]
        with self.log.open("w") as log:
            self.proc = spawn(
                stack,
                argv,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, **(env or {})},
            )
        self.pid = self.proc.pid
        self._wait_connected()

    def _wait_connected(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            with contextlib.suppress(OSError):
                if scrape(self.port, (CONNECTED,))[CONNECTED] == 1:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the agent did not connect to the broker; see {self.log}")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {self.proc.returncode}; see {self.log}")

    def counters(self, *names: str) -> dict[str, float]:
        self.alive()
        return scrape(self.port, names)

    def sample(self) -> Sample:
        wall = time.time()
        got = self.counters(RAW, COMMITS)
        cpu, written = cpu_seconds(self.pid), written_bytes(self.pid)
        return Sample(wall, int(got[RAW]), cpu, written, got[COMMITS])

    def finish(self, published: int) -> int:
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while influx_points(self.lab.influx, self.db) < published:
            self.alive()
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(SETTLE)  # more than published now would be duplicates
        delivered = influx_points(self.lab.influx, self.db)
        stop(self.proc)
        return delivered


# -- the lab and the agent's config -----------------------------------------------------------
class Broker(Mosquitto):
    """mosquitto with a second listener for publishers, so a capture of the first one sees only
    the consumer under test."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, autosave_interval=0)
        self.publish_port = free_port()

    @property
    def publish_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.publish_port}"

    def _prepare(self) -> None:
        super()._prepare()
        with self.conf_path.open("a") as conf:
            conf.write(f"listener {self.publish_port} 127.0.0.1\n")


@dataclass
class Lab:
    """The servers every run shares, the work dir on a real disk, and the run's timing."""

    broker: Broker
    influx: InfluxDB1
    workdir: Path
    window: float
    warmup: float = WARMUP


def agent_config(lab: Lab, cid: str, extra: str, status_port: int) -> Path:
    """The bench's agent config (bench/run.py's template, v1 output, default tuning) plus a
    profile's TOML. Written for the bare subscriber too: its mapping rules give the line bytes."""
    path = lab.workdir / f"{cid}.toml"
    text = AGENT_CONFIG.format(
        data_dir=lab.workdir / cid,
        mqtt_url=lab.broker.url,
        client_id=cid,
        prefix=cid,
        influx_url=lab.influx.url,
        database=cid,
        status_port=status_port,
    )
    path.write_text(text + extra)
    return path


def mapping_rules(config: Path) -> MappingRules:
    return routes_for(load_config(config))[0].rules


def line_per_reading(rules: MappingRules, prefix: str, rate: int, first: int, last: int) -> float:
    """Mean line-protocol bytes (with the newline) of readings ``first`` to ``last`` of the paced
    stream, mapped by the agent's own code with a current 19-digit timestamp."""
    clock = IngestClock(floor_ns=time.time_ns())
    stream = itertools.islice(readings(prefix, rate), first, last)
    sizes = [
        len(line.encode()) + 1
        for topic, payload in stream
        for line in map_payload(rules, topic, payload.encode(), clock)
    ]
    return statistics.fmean(sizes) if sizes else float("nan")


def on_real_disk() -> Path:
    """A work dir whose writes the kernel counts in write_bytes: not tmpfs or ramfs."""
    mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    for base in (tempfile.gettempdir(), "/var/tmp", str(RESULTS.parent.parent)):
        real = os.path.realpath(base)
        under = [(m, t) for m, t in mounts if real == m or real.startswith(m.rstrip("/") + "/")]
        if under and max(under, key=lambda mt: len(mt[0]))[1] not in ("tmpfs", "ramfs"):
            return Path(tempfile.mkdtemp(prefix="edge-agent-steady-", dir=base))
    raise SystemExit("no directory on a real disk for the agent's data (all candidates are tmpfs)")


# -- the runs ---------------------------------------------------------------------------------
def run_steady(lab: Lab, contender: str, rate: int, profile: str, pinned: bool = False) -> Row:
    """One consumer at one steady rate: warm-up, then the measured window."""
    cid = f"bare-{rate}" if contender == "bare" else f"agent-{rate}-{profile}"
    cid += "-pinned" if pinned else ""
    status_port = free_port()
    extra = "" if contender == "bare" else PROFILES[profile].toml
    config = agent_config(lab, cid, extra, status_port)
    with contextlib.ExitStack() as stack:
        consumer: Consumer = (
            Bare(stack, lab.broker, cid)
            if contender == "bare"
            else Agent(stack, lab, cid, config, status_port, pinned, PROFILES[profile].env)
        )
        capture = Capture(stack, lab.broker.port, lab.workdir / f"{cid}.pcapng")
        pacer = Pacer(stack, lab.broker.publish_url, cid, rate, lab.warmup + lab.window + 10)
        time.sleep(max(0.0, pacer.started + lab.warmup - time.monotonic()))
        first = consumer.sample()
        time.sleep(lab.window)
        last = consumer.sample()
        rss = peak_rss_mb(consumer.pid)
        sent = pacer.finish()
        time.sleep(ACK_GRACE)
        capture.stop()
        delivered = consumer.finish(sent["published"])
    mqtt_session(lab.broker, cid, True, None)
    commits = (
        None if first.commits is None or last.commits is None else last.commits - first.commits
    )
    latency = capture.latency(first.wall, last.wall)
    rules = mapping_rules(config)
    return Row(
        contender="bare subscriber" if contender == "bare" else "edge-agent",
        profile="-" if contender == "bare" else profile,
        rate=rate,
        pinned=pinned,
        readings=latency.publishes,
        seconds=last.wall - first.wall,
        cpu_seconds=last.cpu - first.cpu,
        written_bytes=last.written - first.written,
        line_per_reading=line_per_reading(rules, cid, rate, first.readings, last.readings),
        latency=latency,
        peak_rss_mb=rss,
        published=sent["published"],
        delivered=delivered,
        late_max_s=sent["late_max_s"],
        commits=commits,
    )


def steady_backlog(agent: Agent, seconds: float) -> int:
    """The most lines the agent holds unsent in steady state (it flushes every flush_interval).
    Counted as committed minus sent, here and in the recovery: the backlog gauge is refreshed
    only every 2 s, longer than a whole drain may take."""
    most, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = agent.counters(RAW, SENT)
        most = max(most, int(got[RAW] - got[SENT]))
        time.sleep(0.1)
    return most


def pin(pid: int | None, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (threads it starts later inherit the mask)."""
    if pid is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def server_core() -> set[int]:
    """The core the server gets to itself in the outage and the limit runs."""
    return {max(os.sched_getaffinity(0))}


def sensors_cpus() -> set[int] | None:
    """Where the simulated sensors publish from in the outage and the limit runs: in the field
    they are other devices, so they are kept off the gateway's cores (on the server's, the same
    way for the drain and for the limit it is compared with)."""
    return server_core() if len(os.sched_getaffinity(0)) > 1 else None


@contextlib.contextmanager
def split_cores(lab: Lab) -> Iterator[None]:
    """The server on a core of its own; this process (so every process it starts from now on),
    the broker and the rest on the others. Undone on exit."""
    everything = os.sched_getaffinity(0)
    if len(everything) < 2:
        yield
        return
    clients = everything - server_core()
    pin(os.getpid(), clients)
    pin(lab.broker.pid, clients)
    pin(lab.influx.pid, server_core())
    try:
        yield
    finally:
        for pid in (os.getpid(), lab.broker.pid, lab.influx.pid):
            pin(pid, everything)


def run_outage(lab: Lab, seconds: float) -> Outage:
    """Stop InfluxDB for ``seconds`` under a steady stream, start it, time the recovery."""
    cid, rate = "outage", OUTAGE_RATE
    status_port = free_port()
    config = agent_config(lab, cid, "", status_port)
    with contextlib.ExitStack() as stack:
        agent = Agent(stack, lab, cid, config, status_port)
        run_for = lab.warmup + STEADY_SAMPLE + seconds + RECOVERY_TIMEOUT + 10
        pacer = Pacer(stack, lab.broker.publish_url, cid, rate, run_for, sensors_cpus())
        time.sleep(max(0.0, pacer.started + lab.warmup - time.monotonic()))
        # Drained: less than a batch left unsent. The rest goes at the next flush_interval,
        # as in steady state; waiting for it would time the flush timer, not the drain.
        drained = max(
            steady_backlog(agent, STEADY_SAMPLE), load_config(config).outputs[0].batch_size
        )
        say(f"outage: InfluxDB stopped for {seconds:g} s under {rate:,} msg/s")
        lab.influx.stop()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            agent.alive()
            time.sleep(0.5)
        lab.influx.start()
        pin(lab.influx.pid, server_core())
        back = time.time()
        recovery = recover(agent, drained, back)
        sent = pacer.finish()
        delivered = agent.finish(sent["published"])
    mqtt_session(lab.broker, cid, True, None)
    return Outage(
        seconds=seconds,
        rate=rate,
        drained_below=drained,
        **recovery,
        published=sent["published"],
        delivered=delivered,
    )


def recover(agent: Agent, drained: int, back: float) -> dict[str, Any]:
    """From the server's return: the agent's first accepted write, and when it has fewer than
    ``drained`` lines unsent. Times come from the agent's last-success gauge (set as each 204
    arrives), so they are exact to the write; lines from its sent counter in the same scrape."""
    start = agent.counters(RAW, SENT)
    at_return = int(start[RAW] - start[SENT])
    first: dict[str, float] | None = None
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while time.monotonic() < deadline:
        got = agent.counters(RAW, SENT, LAST_SUCCESS)
        if first is None and got[SENT] > start[SENT]:
            first = got
        if first is not None and got[RAW] - got[SENT] < drained:
            return drain_figures(start, first, got, back, at_return)
        time.sleep(DRAIN_POLL)
    say(f"the agent did not drain its backlog within {RECOVERY_TIMEOUT:g} s of the return")
    return drain_figures(start, first, None, back, at_return)


def drain_figures(
    start: dict[str, float],
    first: dict[str, float] | None,
    end: dict[str, float] | None,
    back: float,
    at_return: int,
) -> dict[str, Any]:
    """Seconds to the first point; lines/s from the return, and from the first accepted write
    on (the drain's own speed, without the wait before it)."""
    figures: dict[str, Any] = {
        "backlog_at_return": at_return,
        "first_point_s": first[LAST_SUCCESS] - back if first else None,
        "drained_lines": 0,
        "drain_s": None,
        "drain_from_return": None,
        "drain_once_started": None,
    }
    if first is None or end is None:
        return figures
    lines = int(end[SENT] - start[SENT])
    figures["drained_lines"] = lines
    figures["drain_s"] = end[LAST_SUCCESS] - back
    figures["drain_from_return"] = lines / figures["drain_s"]
    if end[LAST_SUCCESS] > first[LAST_SUCCESS]:
        after = end[SENT] - first[SENT]
        figures["drain_once_started"] = after / (end[LAST_SUCCESS] - first[LAST_SUCCESS])
    return figures


def ingest_limit(lab: Lab, config: Path) -> Limit:
    """The server's own rate for the agent's kind of lines: 1,000 series, fresh ns stamps,
    gzipped at the agent's level in batches of its batch_size, posted by LIMIT_THREADS keep-alive
    connections (one warm-up batch first creates the series)."""
    cfg = load_config(config)
    out = cfg.outputs[0]
    rules = routes_for(cfg)[0].rules
    clock = IngestClock(floor_ns=time.time_ns())
    stream = readings("limit", OUTAGE_RATE)
    bodies = []
    for _ in range(LIMIT_BATCHES + 1):
        batch = itertools.islice(stream, out.batch_size)
        text = "\n".join(
            line
            for topic, payload in batch
            for line in map_payload(rules, topic, payload.encode(), clock)
        )
        bodies.append(gzip.compress(text.encode(), out.gzip_level))
    db = "limit"
    lab.influx.create_database(db)
    post_all(lab.influx.port, db, bodies[:1], 1)
    with contextlib.ExitStack() as stack:  # the sensors, on the server's core as in the drain
        Pacer(stack, lab.broker.publish_url, "limitload", OUTAGE_RATE, 300, sensors_cpus())
        seconds = post_all(lab.influx.port, db, bodies[1:], LIMIT_THREADS)
    return Limit(
        lines=LIMIT_BATCHES * out.batch_size,
        seconds=seconds,
        threads=LIMIT_THREADS,
        batch_size=out.batch_size,
        body_bytes=sum(map(len, bodies[1:])),
        extra={"points_in_db": influx_points(lab.influx, db)},
    )


def post_all(port: int, db: str, bodies: list[bytes], threads: int) -> float:
    """POST every body to /write over ``threads`` keep-alive connections; seconds it took."""
    todo: queue.Queue[bytes] = queue.Queue()
    for body in bodies:
        todo.put(body)
    errors: list[str] = []
    headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain"}

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while True:
                try:
                    body = todo.get_nowait()
                except queue.Empty:
                    return
                conn.request("POST", f"/write?db={db}&precision=ns", body, headers)
                resp = conn.getresponse()
                answer = resp.read()
                if resp.status != 204:
                    errors.append(f"HTTP {resp.status}: {answer[:200]!r}")
        finally:
            conn.close()

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    began = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.monotonic() - began
    if errors:
        raise RuntimeError(f"the ingest limit posts failed: {errors[:3]}")
    return took


# -- report -----------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def table(rows: list[Row]) -> str:
    head = (
        "| contender | profile | msg/s | readings/s | % of a core | CPU µs/reading "
        "| disk B/reading | disk / line bytes | PUBACK p50 ms | PUBACK p99 ms | peak RSS MB "
        "| max in flight | readings/commit | exact |"
    )
    out = [head, "|" + "---|" * 14]
    for r in rows:
        out.append(
            f"| {r.label} | {r.profile} | {r.rate:,} | {r.readings_per_s:,.0f} "
            f"| {r.core_percent:.1f} | {r.cpu_us_per_reading:.1f} | {r.disk_per_reading:,.0f} "
            f"| {r.disk_vs_line:.1f} | {_fmt(r.latency.p50_ms, '.1f')} "
            f"| {_fmt(r.latency.p99_ms, '.1f')} | {r.peak_rss_mb:.1f} "
            f"| {r.latency.max_in_flight:,} | {_fmt(r.readings_per_commit, '.1f')} "
            f"| {'yes' if r.exact else 'NO'} |"
        )
    return "\n".join(out)


def find(rows: list[Row], contender: str, rate: int, profile: str = "-") -> Row:
    return next(
        r
        for r in rows
        if r.contender == contender and r.rate == rate and r.profile == profile and not r.pinned
    )


def check(value: float | None, op: str, target: float) -> dict[str, Any]:
    met = value is not None and (value >= target if op == ">=" else value <= target)
    return {"value": value, "target": f"{op} {target:g}", "met": met}


def checks(rows: list[Row], outage: Outage, limit: Limit) -> dict[str, dict[str, Any]]:
    """The issue's targets, each a ratio of figures measured side by side in this run."""
    bare = find(rows, "bare subscriber", 1_000)
    out: dict[str, dict[str, Any]] = {}
    for name, profile in PROFILES.items():
        agent = find(rows, "edge-agent", 1_000, name)
        low = find(rows, "edge-agent", 100, name)
        ratio = agent.cpu_us_per_reading / bare.cpu_us_per_reading
        out[f"{name}: CPU/reading vs bare, 1,000 msg/s"] = check(ratio, "<=", 1.5)
        out[f"{name}: disk bytes/reading vs line bytes, 1,000 msg/s"] = check(
            agent.disk_vs_line, "<=", profile.disk_vs_line
        )
        if profile.puback_p99_ms is not None:
            out[f"{name}: PUBACK p99 ms, 1,000 msg/s"] = check(
                agent.latency.p99_ms, "<=", profile.puback_p99_ms
            )
        low_vs_high = low.cpu_us_per_reading / agent.cpu_us_per_reading
        out[f"{name}: CPU/reading at 100 vs 1,000 msg/s"] = check(low_vs_high, "<=", 1.0)
    out["first point after the server's return, s"] = check(outage.first_point_s, "<=", 5.0)
    drain = outage.drain_once_started
    out["drain vs the server's ingest limit"] = check(
        drain / limit.rate if drain else None, ">=", 0.7
    )
    agents = [r.peak_rss_mb for r in rows if r.contender == "edge-agent"]
    out["agent peak RSS MB"] = check(max(agents), "<=", 60.0)
    exact = all(r.exact for r in rows) and outage.exact
    out["every reading delivered exactly once"] = {"value": exact, "target": "yes", "met": exact}
    return out


def outage_lines(outage: Outage, limit: Limit) -> list[str]:
    drain = outage.drain_once_started
    return [
        f"- outage: InfluxDB down {outage.seconds:g} s under {outage.rate:,} msg/s; "
        f"backlog at its return {outage.backlog_at_return:,} lines; first new point "
        f"{_fmt(outage.first_point_s, '.2f')} s "
        "after /ping answered again",
        f"- drain: {outage.drained_lines:,} lines sent until fewer than "
        f"{outage.drained_below:,} were left, "
        f"{_fmt(outage.drain_s, '.2f')} s after the return: "
        f"{_fmt(outage.drain_from_return, ',.0f')} lines/s from the return, "
        f"{_fmt(drain, ',.0f')} lines/s from the first accepted write on",
        f"- server's ingest limit: {limit.rate:,.0f} lines/s ({limit.lines:,} lines, gzip batches "
        f"of {limit.batch_size:,}, {limit.threads} keep-alive connections, {limit.seconds:.2f} s); "
        f"drain / limit = {_fmt(drain / limit.rate if drain else None, '.2f')}",
    ]


def report(rows: list[Row], outage: Outage, limit: Limit, env: dict[str, Any]) -> None:
    """Print the markdown table, the outage lines and the checks; write the same as JSON."""
    results = checks(rows, outage, limit)
    print(f"\n## edge-agent steady state: QoS 1 value readings, {env['cpus']} CPUs\n")
    print(table(rows))
    print()
    print("\n".join(outage_lines(outage, limit)))
    print()
    for key, c in results.items():
        value = c["value"] if isinstance(c["value"], bool) else _fmt(c["value"], ".2f")
        print(f"- {key}: {value} (target {c['target']}: {'met' if c['met'] else 'MISSED'})")
    lines = statistics.fmean(r.line_per_reading for r in rows)
    bare_low_vs_high = (
        find(rows, "bare subscriber", 100).cpu_us_per_reading
        / find(rows, "bare subscriber", 1_000).cpu_us_per_reading
    )
    late = max(r.late_max_s for r in rows)
    unanswered = sum(r.latency.unanswered for r in rows)
    print(
        f"\nNotes: {env['window']:g} s measured per row after {WARMUP:g} s of warm-up. Line bytes: "
        f"{lines:.1f} per reading (the agent's own mapping, newline included). Disk: write_bytes "
        "of the consumer process, counted per page dirtied (4 KiB). PUBACK latency from the "
        f"wire; {unanswered} PUBLISHes of the windows got no PUBACK before the capture ended. "
        "The bare subscriber's own CPU/reading at 100 vs 1,000 msg/s: "
        f"{bare_low_vs_high:.2f}. "
        f"The publisher ran at most {late * 1000:.0f} ms behind its schedule. The drain ratio "
        "uses the drain from the first accepted write on; the wait before it is the first-point "
        "figure. Load average (1 min) at the start and the end: "
        f"{env['load_average_1min'][0]:.2f}, {env['load_average_1min'][1]:.2f}."
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
        **env,
        "rows": [{**asdict(r), **derived(r)} for r in rows],
        "outage": asdict(outage),
        "limit": {**asdict(limit), "rate": limit.rate},
        "checks": results,
        "bare_cpu_per_reading_100_vs_1000": bare_low_vs_high,
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    say(f"wrote {RESULTS} ({env['wall_seconds']:.0f} s in all)")


def derived(row: Row) -> dict[str, Any]:
    names = ["readings_per_s", "core_percent", "cpu_us_per_reading", "disk_per_reading"]
    names += ["disk_vs_line", "readings_per_commit", "exact"]
    return {name: getattr(row, name) for name in names}


# -- main -------------------------------------------------------------------------------------
def run_all(lab: Lab, outage_seconds: float) -> tuple[list[Row], Outage, Limit]:
    rows = []
    for rate in RATES:
        rows.append(run_steady(lab, "bare", rate, "-"))
        say(f"bare subscriber, {rate:,} msg/s: {rows[-1].cpu_us_per_reading:.0f} µs/reading")
        for profile in PROFILES:
            rows.append(run_steady(lab, "agent", rate, profile))
            say(f"edge-agent {profile}, {rate:,} msg/s: {rows[-1].cpu_us_per_reading:.0f} µs")
    rows.append(run_steady(lab, "agent", PINNED_RATE, next(iter(PROFILES)), pinned=True))
    say(f"edge-agent pinned, {PINNED_RATE:,} msg/s: {rows[-1].cpu_us_per_reading:.0f} µs/reading")
    with split_cores(lab):
        outage = run_outage(lab, outage_seconds)
        limit = ingest_limit(lab, agent_config(lab, "limit", "", free_port()))
    return rows, outage, limit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.steady",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=WINDOW, help="measured window per row")
    p.add_argument("--outage", type=float, default=OUTAGE, help="seconds InfluxDB is down")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, captures)")
    args = p.parse_args(argv)
    for tool in ("dumpcap", "tshark", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: run `scripts/dev bench`, which installs it")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # cleaned up like a Ctrl-C
    load_at_start = os.getloadavg()[0]
    workdir = on_real_disk()
    lab = Lab(Broker(workdir / "mosquitto"), InfluxDB1(workdir / "influxdb"), workdir, args.seconds)
    began = time.monotonic()
    try:
        lab.broker.start()
        lab.influx.start()
        say(f"mosquitto {lab.broker.url}, InfluxDB 1.x {lab.influx.url}, files in {workdir}")
        rows, outage, limit = run_all(lab, args.outage)
    except KeyboardInterrupt:
        say("interrupted; every process the bench started is stopped")
        return 130
    finally:
        lab.influx.stop()
        lab.broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    env = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "mosquitto": mosquitto_version(),
        "window": args.seconds,
        "warmup": WARMUP,
        "wall_seconds": time.monotonic() - began,
        "load_average_1min": [load_at_start, os.getloadavg()[0]],
    }
    report(rows, outage, limit, env)
    if not all(r.exact for r in rows) or not outage.exact:
        say("FAILED: the agent did not deliver exactly every published reading")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
