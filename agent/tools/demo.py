"""``edge-agent demo``: the whole pipeline on this machine, in a minute.

Starts a private mosquitto and InfluxDB 1.x on free loopback ports (data in a temp dir), runs
the agent as a real subprocess and the simulator against them, takes the server down for a
while in the middle, then prints what InfluxDB holds beside what was published: every raw
reading in one database, 10-second aggregates of them in another.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from agent.tools.simulate import MEASUREMENTS

if TYPE_CHECKING:  # imported when the demo runs, not whenever the CLI builds its parser
    from agent.tools.localservers import InfluxDB1

DEMO_CONFIG = """\
[agent]
name = "demo-gateway"
data_dir = "{data_dir}"
log_format = "json"
[agent.tags]
plant = "p001"

[mqtt]
url = "{mqtt_url}"
client_id = "edge-agent-demo"

[[mqtt.subscriptions]]
topic = "plant/{{line}}/sensor/{{sensor}}/{{measurement}}"
format = "value"
qos = 1

[[outputs]]
name = "cloud"
url = "{influx_url}"
api = "v1"
database = "plants"
streams = ["raw"]
batch_size = 5000
flush_interval = "1s"

[[outputs]]
name = "dashboards"
url = "{influx_url}"
api = "v1"
database = "plants_10s"
streams = ["aggregates"]

[[aggregations]]
every = "10s"
lateness = "2s"
functions = ["mean", "min", "max", "count"]

[status]
listen = "127.0.0.1:{status_port}"
"""


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _metric(status_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=5) as resp:
        total = 0.0
        for line in resp.read().decode().splitlines():
            if line.startswith(name):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _aggregated(influx: InfluxDB1, measurement: str) -> tuple[int, int]:
    """Readings counted by the 10-second aggregates of ``measurement``, and their windows."""
    res = influx.query(
        "plants_10s", f'SELECT sum("value_count"), count("value_count") FROM "{measurement}"'
    )
    series = res["results"][0].get("series")
    if not series:
        return 0, 0
    _, summed, windows = series[0]["values"][0]
    return int(summed), int(windows)


def run(args: argparse.Namespace) -> int:
    from agent.tools.localservers import InfluxDB1, Mosquitto, free_port

    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    mqtt = Mosquitto(workdir / "mosquitto")
    influx = InfluxDB1(workdir / "influxdb")
    agent_proc: subprocess.Popen[bytes] | None = None
    try:
        mqtt.start()
        influx.start()
        influx.create_database("plants")
        influx.create_database("plants_10s")
        _say(f"mosquitto on {mqtt.url}, InfluxDB 1.x on {influx.url}, files in {workdir}")
        status_port = free_port()
        config = workdir / "agent.toml"
        config.write_text(
            DEMO_CONFIG.format(
                data_dir=workdir / "agent",
                mqtt_url=mqtt.url,
                influx_url=influx.url,
                status_port=status_port,
            )
        )
        log_path = workdir / "agent.log"
        agent_proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log_path.open("wb"),
        )
        _say(f"agent running (pid {agent_proc.pid}), log in {log_path}")
        time.sleep(1.5)
        summary = workdir / "published.json"
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "simulate",
                "--url",
                mqtt.url,
                "--lines",
                "4",
                "--sensors",
                "25",
                "--rate",
                str(args.rate),
                "--duration",
                str(args.duration),
                "--summary",
                str(summary),
            ],
        )
        _say(f"simulator: 4 lines x 25 sensors, {args.rate:g} readings/s for {args.duration:g}s")
        if args.outage:

            def outage() -> None:
                time.sleep(args.duration / 3)
                _say(f"taking InfluxDB down for {args.outage:g}s (link outage)")
                influx.kill()
                time.sleep(args.outage)
                influx.start()
                _say("InfluxDB is back; the agent sends its backlog")

            threading.Thread(target=outage, daemon=True).start()
        sim.wait()
        published = json.loads(summary.read_text())
        _say(f"published {published['published']} readings (all acknowledged by the broker)")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            raw = sum(influx.count("plants", m) for m in MEASUREMENTS)
            summed = sum(_aggregated(influx, m)[0] for m in MEASUREMENTS)
            if raw >= published["published"] and summed >= published["published"]:
                break
            time.sleep(1)
        print()
        print(
            f"{'measurement':<14}{'published':>12}{'in InfluxDB':>14}{'10s windows':>14}"
            f"{'their count':>14}"
        )
        ok = True
        for measurement in MEASUREMENTS:
            sent = published["by_measurement"].get(measurement, 0)
            held = influx.count("plants", measurement)
            counted, windows = _aggregated(influx, measurement)
            ok &= sent == held == counted
            print(f"{measurement:<14}{sent:>12}{held:>14}{windows:>14}{counted:>14}")
        raw_bytes = _metric(status_port, 'edge_output_bytes_sent_total{output="cloud"}')
        agg_bytes = _metric(status_port, 'edge_output_bytes_sent_total{output="dashboards"}')
        retries = _metric(status_port, "edge_output_retries_total")
        n = max(1, published["published"])
        print()
        _say(
            f"bytes on the wire (gzip): raw {raw_bytes:,.0f} ({raw_bytes / n:.1f} per reading), "
            f"10s aggregates {agg_bytes:,.0f} ({agg_bytes / n:.2f} per reading); "
            f"write retries during the outage: {retries:.0f}"
        )
        _say(
            "exact match: every reading arrived once, and once in its 10-second window"
            if ok
            else "MISMATCH: see the agent log"
        )
        return 0 if ok else 1
    finally:
        if agent_proc is not None and agent_proc.poll() is None:
            agent_proc.send_signal(signal.SIGTERM)
            agent_proc.wait(timeout=30)
        influx.stop()
        mqtt.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline locally against mosquitto and InfluxDB")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of simulated readings")
    p.add_argument("--rate", type=float, default=2000.0, help="readings per second")
    p.add_argument("--outage", type=float, default=10.0, help="seconds InfluxDB is down (0: none)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with logs and data")
    p.set_defaults(handler=run)
