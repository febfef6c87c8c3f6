"""``python -m bench.run``: how fast and how cheaply the agent drains a backlog, with yardsticks.

Three consumers take the same N QoS 1 readings from one freshly started mosquitto, each on its
own client id and topic prefix, and write them (where they write) to their own InfluxDB 1.x
database:

1. bare: a paho subscriber that only counts (bench/bare.py), the ceiling for a Python client;
2. baseline: one synchronous POST per message (bench/baseline.py), the usual script, run for a
   bounded time because it is slow;
3. agent: the real ``python -m agent run`` with an InfluxDB v1 output and default tuning.

Method: the consumer's persistent session is created first (subscribe at QoS 1, disconnect),
then all N messages are published and acknowledged while it is offline, so the broker holds
the whole backlog. Only then is the consumer started, and the clock runs from its spawn until
the target holds N points (InfluxDB count, polled) or the bare subscriber has counted N. The
consumer's own speed is measured, not the publisher's. CPU (user+sys, all threads, from
/proc/PID/stat) and peak RSS (VmHWM) are read at that moment, before the process is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.tools.localservers import InfluxDB1, Mosquitto, free_port
from agent.tools.simulate import Publisher, make_sensors
from bench.bare import SESSION_EXPIRY as BARE_SESSION_EXPIRY

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
LINES, SENSORS = 4, 25  # 100 series over the simulator's 4 measurements
AGENT_SESSION_EXPIRY = 7 * 86400  # the agent's default session_expiry; its session must match
POLL = 0.1  # InfluxDB count poll period while timing: the end time is late by at most this
MAX_UNACKED = 20_000  # publishes not yet acknowledged, at most
SETTLE = 2.0  # wait after reaching N, then count again: more than N means duplicates
AGENT_METRICS = (
    "edge_readings_committed_total",
    "edge_output_lines_sent_total",
    "edge_output_bytes_sent_total",
    "edge_output_requests_total",
    "edge_spool_commit_seconds_sum",
    "edge_spool_commit_seconds_count",
)
TARGETS = {
    "agent_vs_ceiling_throughput": (">=", 0.70),
    "agent_vs_baseline_throughput": (">=", 15.0),
    "agent_peak_rss_mb": ("<=", 60.0),
    "agent_vs_bare_cpu_per_reading": ("<=", 3.0),
}

AGENT_CONFIG = """\
[agent]
name = "bench"
data_dir = "{data_dir}"
log_format = "json"

[mqtt]
url = "{mqtt_url}"
client_id = "{client_id}"

[[mqtt.subscriptions]]
topic = "{prefix}/{{line}}/sensor/{{sensor}}/{{measurement}}"
format = "value"
qos = 1

[[outputs]]
name = "influx"
url = "{influx_url}"
api = "v1"
database = "{database}"

[status]
listen = "127.0.0.1:{status_port}"
"""


@dataclass
class Result:
    """One contender's numbers; ``points`` is what reached the target when the clock stopped."""

    name: str
    points: int
    exact: bool
    final_count: int
    seconds: float
    connect_seconds: float | None
    cpu_seconds: float
    peak_rss_mb: float
    body_bytes_per_reading: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.points / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_reading(self) -> float:
        return self.cpu_seconds / self.points * 1e6 if self.points else float("nan")


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- the consumer process, seen from outside -------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """user+sys of every thread of ``pid`` so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of resident memory, so no short peak is missed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def stop(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM the consumer we started and wait; SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class LineReader:
    """Collects a child's stdout lines on a thread so waits on them can have deadlines."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.strip())

    def wait_for(self, prefix: str, deadline: float) -> str | None:
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line.startswith(prefix):
                return line
        return None

    def rest(self, timeout: float = 10.0) -> list[str]:
        self._thread.join(timeout)
        out = []
        while not self.lines.empty():
            out.append(self.lines.get())
        return out


# -- broker side ------------------------------------------------------------------------------
def mqtt_session(
    mqtt: Mosquitto, client_id: str, v5: bool, topic_filter: str | None, expiry: int = 0
) -> None:
    """Create (subscribe, keep) or, with ``topic_filter=None``, delete a persistent session."""
    keep = topic_filter is not None
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else not keep,
    )
    acked = threading.Event()
    client.on_connect = lambda *_: acked.set()
    client.on_subscribe = lambda *_: acked.set()
    if v5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = expiry if keep else 0
        client.connect("127.0.0.1", mqtt.port, clean_start=not keep, properties=props)
    else:
        client.connect("127.0.0.1", mqtt.port)
    client.loop_start()
    try:
        if not acked.wait(10):
            raise RuntimeError(f"{client_id}: no CONNACK")
        if topic_filter is not None:
            acked.clear()
            client.subscribe(topic_filter, qos=1)
            if not acked.wait(10):
                raise RuntimeError(f"{client_id}: no SUBACK")
    finally:
        client.disconnect()
        client.loop_stop()


def check_broker_queues(mqtt: Mosquitto, messages: int) -> None:
    """The broker must queue the whole backlog for an offline session instead of dropping it."""
    conf = mqtt.conf_path.read_text()
    limits = {k: int(v) for k, v in re.findall(r"^(max_queued_\w+) (\d+)$", conf, re.M)}
    count, size = limits.get("max_queued_messages", 1000), limits.get("max_queued_bytes", 0)
    if (count and count < messages) or size:
        raise SystemExit(
            f"mosquitto would drop part of the backlog (max_queued_messages={count}, "
            f"max_queued_bytes={size}) for --messages {messages}; lower --messages"
        )


def mosquitto_version() -> str | None:
    exe = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if exe is None:
        return None
    usage = subprocess.run([exe, "-h"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"mosquitto version (\S+)", usage)
    return found.group(1) if found else None


def broker_honours_receive_maximum(mqtt: Mosquitto, window: int = 10) -> bool:
    """Does the broker keep at most ``window`` unacknowledged QoS 1 messages in flight to a v5
    client that asked for it, also after the client's first PUBACK?

    The agent relies on it to bound its intake buffer (and its redelivery records); mosquitto
    before 2.0.13 (Debian's 2.0.11) sends the whole backlog after the first PUBACK, so the
    agent's memory then grows with the backlog. Recorded so RSS numbers can be read right.
    """
    cid = "bench-rxmax"
    mqtt_session(mqtt, cid, True, f"{cid}/+/sensor/+/+", 60)
    publish(mqtt, cid, 10 * window, quiet=True)
    got: list[int] = []
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv5, manual_ack=True
    )
    client.on_message = lambda _c, _u, msg: got.append(msg.mid)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 60
    props.ReceiveMaximum = window
    client.connect("127.0.0.1", mqtt.port, clean_start=False, properties=props)
    client.loop_start()
    try:
        deadline = time.monotonic() + 5
        while len(got) < window and time.monotonic() < deadline:
            time.sleep(0.01)
        client.ack(got[0], 1)
        time.sleep(0.5)
        return len(got) <= window + 1
    finally:
        client.disconnect()
        client.loop_stop()
        mqtt_session(mqtt, cid, True, None)


def publish(mqtt: Mosquitto, prefix: str, messages: int, *, quiet: bool = False) -> None:
    """Publish the same N readings (same seed) under ``prefix`` and wait for every PUBACK."""
    sensors = make_sensors(prefix, LINES, SENSORS, seed=1)
    rng = random.Random(1)
    publisher = Publisher(mqtt.url, f"{prefix}-publisher", qos=1)
    began = time.monotonic()
    try:
        for i in range(messages):
            # paho's packet ids wrap at 65535: more unacknowledged than that would collide.
            while i - publisher.acked >= MAX_UNACKED:
                time.sleep(0.001)
            sensor = sensors[i % len(sensors)]
            publisher.publish(sensor.topic, repr(sensor.read(rng)))
        if not publisher.wait_acked(messages, timeout=max(60.0, messages / 1000)):
            raise RuntimeError(f"only {publisher.acked} of {messages} publishes acknowledged")
    finally:
        publisher.close()
    took = time.monotonic() - began
    if not quiet:
        say(f"{prefix}: {messages} messages queued at the broker ({messages / took:,.0f}/s)")


# -- InfluxDB side ----------------------------------------------------------------------------
def influx_points(influx: InfluxDB1, db: str) -> int:
    """Points over all measurements of ``db`` (one query: this runs every POLL seconds)."""
    res = influx.query(db, 'SELECT count("value") FROM /.*/')
    return sum(int(s["values"][0][1]) for s in res["results"][0].get("series", []))


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


# -- the three contenders ---------------------------------------------------------------------
def run_bare(mqtt: Mosquitto, n: int, timeout: float) -> Result:
    name = cid = "bench-bare"
    topic_filter = f"{name}/+/sensor/+/+"
    mqtt_session(mqtt, cid, True, topic_filter, BARE_SESSION_EXPIRY)
    publish(mqtt, name, n)
    argv = [
        "-m",
        "bench.bare",
        "--url",
        mqtt.url,
        "--client-id",
        cid,
        "--filter",
        topic_filter,
        "--expect",
        str(n),
    ]
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = LineReader(proc.stdout)
    try:
        connected = out.wait_for("connected", began + 30)
        done = out.wait_for("done", began + timeout)
        ended = float(done.split()[1]) if done else time.monotonic()
        cpu, rss = cpu_seconds(proc.pid), peak_rss_mb(proc.pid)
        time.sleep(SETTLE)
    finally:
        stop(proc)
    counts = [int(line.split()[1]) for line in out.rest() if line.startswith("count ")]
    final = counts[0] if counts else -1
    return Result(
        name="bare subscriber",
        points=n if done else max(final, 0),
        exact=final == n,
        final_count=final,
        seconds=ended - began,
        connect_seconds=float(connected.split()[1]) - began if connected else None,
        cpu_seconds=cpu,
        peak_rss_mb=rss,
        body_bytes_per_reading=None,
    )


def run_baseline(mqtt: Mosquitto, influx: InfluxDB1, n: int, seconds: float) -> Result:
    name = cid = "bench-baseline"
    db = "bench_baseline"
    topic_filter = f"{name}/+/sensor/+/+"
    influx.create_database(db)
    mqtt_session(mqtt, cid, False, topic_filter)
    publish(mqtt, name, n)
    argv = [
        "-m",
        "bench.baseline",
        "--url",
        mqtt.url,
        "--client-id",
        cid,
        "--filter",
        topic_filter,
        "--influx",
        influx.url,
        "--database",
        db,
    ]
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = LineReader(proc.stdout)
    try:
        connected = out.wait_for("connected", began + 30)
        points = 0
        while time.monotonic() - began < seconds and points < n and proc.poll() is None:
            time.sleep(0.5)
            points = influx_points(influx, db)
        ended = time.monotonic()
        cpu, rss = cpu_seconds(proc.pid), peak_rss_mb(proc.pid)
    finally:
        stop(proc)
    stats: dict[str, int] = {}
    for line in out.rest():
        if line.startswith("{"):
            stats = json.loads(line)
    posted = stats.get("posted", 0)
    mqtt_session(mqtt, cid, False, None)  # drop the rest of its backlog at the broker
    return Result(
        name="baseline (POST per message)",
        points=points,
        exact=points == n,
        final_count=points,
        seconds=ended - began,
        connect_seconds=float(connected.split()[1]) - began if connected else None,
        cpu_seconds=cpu,
        peak_rss_mb=rss,
        body_bytes_per_reading=stats["body_bytes"] / posted if posted else None,
        extra={
            "bounded_seconds": seconds,
            "posted": posted,
            "failed": stats.get("failed"),
            "request_bytes_per_reading": stats["request_bytes"] / posted if posted else None,
        },
    )


def run_agent(
    mqtt: Mosquitto,
    influx: InfluxDB1,
    n: int,
    workdir: Path,
    timeout: float,
    profile: Path | None = None,
    profile_gil: bool = False,
) -> Result:
    name = cid = "bench-agent"
    db = "bench_agent"
    influx.create_database(db)
    status_port = free_port()
    config = workdir / "agent.toml"
    config.write_text(
        AGENT_CONFIG.format(
            data_dir=workdir / "agent",
            mqtt_url=mqtt.url,
            client_id=cid,
            prefix=name,
            influx_url=influx.url,
            database=db,
            status_port=status_port,
        )
    )
    mqtt_session(mqtt, cid, True, f"{name}/+/sensor/+/+", AGENT_SESSION_EXPIRY)
    publish(mqtt, name, n)
    log_path = workdir / "agent.log"
    wall, began = time.time(), time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    spy = _attach_profiler(proc.pid, profile, profile_gil) if profile else None
    try:
        points = 0
        while time.monotonic() - began < timeout and proc.poll() is None:
            points = influx_points(influx, db)
            if points >= n:
                break
            time.sleep(POLL)
        ended = time.monotonic()
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}; see {log_path}")
        cpu, rss = cpu_seconds(proc.pid), peak_rss_mb(proc.pid)
        sent = {name: metric(status_port, name) for name in AGENT_METRICS}
        time.sleep(SETTLE)
        final = influx_points(influx, db)
    finally:
        stop(proc)
        if spy is not None:
            spy.wait(30)
    commits = sent["edge_spool_commit_seconds_count"]
    commit_ms = 1000 * sent["edge_spool_commit_seconds_sum"] / commits if commits else None
    return Result(
        name="edge-agent",
        points=min(points, n),
        exact=final == n,
        final_count=final,
        seconds=ended - began,
        connect_seconds=_connected_at(log_path, wall),
        cpu_seconds=cpu,
        peak_rss_mb=rss,
        body_bytes_per_reading=sent["edge_output_bytes_sent_total"] / n,
        extra={"metrics": sent, "commits": commits, "mean_commit_ms": commit_ms},
    )


def _attach_profiler(pid: int, output: Path, gil: bool) -> subprocess.Popen[bytes]:
    """py-spy on the running agent, collapsed stacks to ``output``; it exits with the agent.

    ``gil``: sample only the thread holding the GIL. Without it a thread waiting to get the GIL
    back (the spool thread after each sqlite step) looks busy, which overstates its share.
    """
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    output.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            *(["--gil"] if gil else []),
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _connected_at(log_path: Path, wall_start: float) -> float | None:
    """Seconds from spawn to the agent's first ``mqtt_connected`` log line (JSON, UTC ISO)."""
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "mqtt_connected":
                return datetime.fromisoformat(record["timestamp"]).timestamp() - wall_start
    return None


# -- report -----------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(results: list[Result]) -> str:
    head = (
        "| contender | points/s | exact N | points | s | connect s | CPU s | CPU µs/reading "
        "| peak RSS MB | body B/reading |"
    )
    rows = [head, "|" + "---|" * 10]
    for r in results:
        rows.append(
            f"| {r.name} | {r.rate:,.0f} | {'yes' if r.exact else 'no'} | {r.final_count:,} "
            f"| {r.seconds:.2f} | {_fmt(r.connect_seconds, '.2f')} | {r.cpu_seconds:.2f} "
            f"| {r.cpu_us_per_reading:.1f} | {r.peak_rss_mb:.1f} "
            f"| {_fmt(r.body_bytes_per_reading, '.2f')} |"
        )
    return "\n".join(rows)


def ratios(bare: Result, baseline: Result, agent: Result) -> dict[str, dict[str, Any]]:
    values = {
        "agent_vs_ceiling_throughput": agent.rate / bare.rate,
        "agent_vs_baseline_throughput": agent.rate / baseline.rate if baseline.rate else None,
        "agent_peak_rss_mb": agent.peak_rss_mb,
        "agent_vs_bare_cpu_per_reading": agent.cpu_us_per_reading / bare.cpu_us_per_reading,
    }
    out = {}
    for key, value in values.items():
        op, target = TARGETS[key]
        met = value is not None and (value >= target if op == ">=" else value <= target)
        out[key] = {"value": value, "target": f"{op} {target:g}", "met": met}
    return out


def report(results: list[Result], env: dict[str, Any], wall: float) -> None:
    """Print the markdown table, ratios and notes; write the same to bench/results/latest.json."""
    bare, baseline, agent = results
    checks = ratios(bare, baseline, agent)
    print(f"\n## edge-agent bench: {env['messages']:,} QoS 1 readings, {env['cpus']} CPUs\n")
    print(table(results))
    print()
    for key, check in checks.items():
        mark = "met" if check["met"] else "MISSED"
        print(f"- {key}: {_fmt(check['value'], '.2f')} (target {check['target']}: {mark})")
    headers = _fmt(baseline.extra["request_bytes_per_reading"], ".0f")
    honoured = (
        "yes"
        if env["broker_honours_receive_maximum"]
        else "NO (the agent pauses its socket reader at receive_maximum instead)"
    )
    print(
        f"\nNotes: the bare subscriber is {bare.rate / max(baseline.rate, 1e-9):.1f}x the "
        "baseline here, which bounds agent/baseline unless the agent beats a bare paho client. "
        "body B/reading: request body bytes (agent: gzip, edge_output_bytes_sent_total / N; "
        f"baseline: one uncompressed line per POST, {headers} B with HTTP headers). The baseline "
        f"ran at most {env['baseline_seconds']:g} s; the agent's end time is polled every "
        f"{POLL:g} s. mosquitto {env['mosquitto']} honours Receive Maximum after the first "
        f"PUBACK: {honoured}."
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
        **env,
        "wall_seconds": round(wall, 1),
        "results": [
            {**asdict(r), "rate": r.rate, "cpu_us_per_reading": r.cpu_us_per_reading}
            for r in results
        ],
        "ratios": checks,
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    say(f"wrote {RESULTS} ({wall:.0f} s in all)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--messages", type=int, default=100_000, help="N readings per contender")
    p.add_argument(
        "--baseline-seconds",
        type=float,
        default=20.0,
        help="stop the baseline after this long if it has not finished",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="give up on the bare subscriber or the agent after this long",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="attach py-spy to the agent, collapsed stacks to FILE (adds overhead; "
        "summarise with python -m bench.hotspots FILE)",
    )
    p.add_argument(
        "--profile-gil", action="store_true", help="profile only the thread holding the GIL"
    )
    args = p.parse_args(argv)
    n = args.messages

    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-bench-"))
    # autosave 0: the broker writes its db only on exit, not the whole backlog every second.
    mqtt = Mosquitto(workdir / "mosquitto", autosave_interval=0)
    influx = InfluxDB1(workdir / "influxdb")
    began = time.monotonic()
    try:
        mqtt.start()
        influx.start()
        check_broker_queues(mqtt, n)
        say(f"mosquitto {mqtt.url}, InfluxDB 1.x {influx.url}, files in {workdir}")
        rx_max = broker_honours_receive_maximum(mqtt)
        bare = run_bare(mqtt, n, args.timeout)
        say(f"bare subscriber: {bare.rate:,.0f}/s")
        agent = run_agent(mqtt, influx, n, workdir, args.timeout, args.profile, args.profile_gil)
        say(f"edge-agent: {agent.rate:,.0f}/s")
        baseline = run_baseline(mqtt, influx, n, args.baseline_seconds)
        say(f"baseline: {baseline.rate:,.0f}/s")
    finally:
        influx.stop()
        mqtt.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    env = {
        "messages": n,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "mosquitto": mosquitto_version(),
        "broker_honours_receive_maximum": rx_max,
        "baseline_seconds": args.baseline_seconds,
    }
    report([bare, baseline, agent], env, time.monotonic() - began)
    if not (bare.exact and agent.exact):
        say("FAILED: a consumer did not end with exactly N readings; the numbers are not valid")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
