"""``python -m bench.wire``: bytes on the uplink per raw reading, by what an output sends.

The same N timestamped readings (100 sensors, one reading per second each, JSON payloads with
their own time, so they span N / 100 seconds of event time) are queued at the broker for each
mode, then drained by the real agent into InfluxDB 1.x:

- raw only: ``streams = ["raw"]``;
- 1-minute aggregates only: ``streams = ["aggregates"]`` (mean, min, max, count);
- raw + aggregates: both streams on one output;

beside the one-POST-per-reading baseline, whose bytes are computed from the same readings: one
uncompressed line per POST plus the request headers ``requests`` sends (bench/baseline.py).
Request body bytes come from the agent's ``edge_output_bytes_sent_total``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from agent.tools.localservers import InfluxDB1, Mosquitto, free_port
from agent.tools.simulate import Publisher, make_sensors
from bench.baseline import header_bytes, to_line
from bench.run import AGENT_SESSION_EXPIRY, cpu_seconds, metric, mqtt_session, say, stop

LINES, SENSORS = 4, 25
EVERY = 60  # seconds per aggregate window
RESULTS = Path(__file__).resolve().parent / "results" / "wire.json"
MODES = {
    "raw only": ["raw"],
    "1-minute aggregates only": ["aggregates"],
    "raw + 1-minute aggregates": ["aggregates", "raw"],
}
CONFIG = """\
[agent]
name = "wire"
data_dir = "{data_dir}"
log_format = "json"
[mqtt]
url = "{mqtt_url}"
client_id = "{client_id}"
[[mqtt.subscriptions]]
topic = "{prefix}/{{line}}/sensor/{{sensor}}/{{measurement}}"
format = "json"
[[outputs]]
name = "cloud"
url = "{influx_url}"
api = "v1"
database = "{database}"
streams = {streams}
[status]
listen = "127.0.0.1:{status_port}"
"""
AGGREGATION = """
[[aggregations]]
every = "{every}s"
lateness = "2s"
functions = ["mean", "min", "max", "count"]
"""


@dataclass
class WireResult:
    mode: str
    readings: int
    lines_sent: int
    requests: int
    body_bytes: int
    cpu_seconds: float | None = None  # of the agent, until the server took everything

    @property
    def per_reading(self) -> float:
        return self.body_bytes / self.readings


def readings(prefix: str, n: int, t0_ms: int) -> list[tuple[str, str]]:
    """(topic, JSON payload) for N readings, one per sensor per second of event time."""
    sensors = make_sensors(prefix, LINES, SENSORS, seed=1)
    rng = random.Random(1)
    out = []
    for i in range(n):
        sensor = sensors[i % len(sensors)]
        ts = t0_ms + (i // len(sensors)) * 1000
        out.append((sensor.topic, json.dumps({"time": ts, "value": sensor.read(rng)})))
    return out


def expected_windows(n: int, t0_ms: int) -> int:
    seconds = -(-n // (LINES * SENSORS))
    first = t0_ms // 1000 // EVERY
    last = (t0_ms // 1000 + seconds - 1) // EVERY
    return (last - first + 1) * LINES * SENSORS


def run_mode(
    mqtt: Mosquitto, influx: InfluxDB1, workdir: Path, mode: str, n: int, timeout: float
) -> WireResult:
    slug = "".join(c for c in mode if c.isalnum())[:12]
    prefix = client_id = f"wire-{slug}"
    db = f"wire_{slug}"
    influx.create_database(db)
    port = free_port()
    config = workdir / f"{slug}.toml"
    config.write_text(
        CONFIG.format(
            data_dir=workdir / slug,
            mqtt_url=mqtt.url,
            client_id=client_id,
            prefix=prefix,
            influx_url=influx.url,
            database=db,
            streams=json.dumps(MODES[mode]),
            status_port=port,
        )
        + (AGGREGATION.format(every=EVERY) if "aggregates" in MODES[mode] else "")
    )
    mqtt_session(mqtt, client_id, True, f"{prefix}/+/sensor/+/+", AGENT_SESSION_EXPIRY)
    t0 = (int(time.time()) - 3600) // EVERY * EVERY * 1000
    publisher = Publisher(mqtt.url, f"{prefix}-publisher", qos=1)
    for topic, payload in readings(prefix, n, t0):
        publisher.publish(topic, payload)
    if not publisher.wait_acked(n, timeout=120):
        raise RuntimeError(f"only {publisher.acked} of {n} publishes acknowledged")
    publisher.close()
    want = (n if "raw" in MODES[mode] else 0) + (
        expected_windows(n, t0) if "aggregates" in MODES[mode] else 0
    )
    with (workdir / f"{slug}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + timeout
        sent = 0.0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                sent = metric(port, "edge_output_lines_sent_total")
            except OSError:
                sent = 0.0
            if sent >= want:
                break
            time.sleep(0.2)
        if sent < want:
            tail = (workdir / f"{slug}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{mode}: {sent:.0f} of {want} lines sent; agent log:\n{tail}")
        cpu = cpu_seconds(proc.pid)
        body = metric(port, "edge_output_bytes_sent_total")
        requests_made = metric(port, "edge_output_requests_total")
    finally:
        stop(proc)
    return WireResult(mode, n, int(sent), int(requests_made), int(body), cpu)


def baseline(prefix: str, n: int) -> WireResult:
    """One uncompressed line per POST, with the request line and headers ``requests`` sends."""
    session = requests.Session()
    url = "http://127.0.0.1:8086/write?db=bench"
    total = 0
    for topic, payload in readings(prefix, n, 0):
        line = to_line(topic, str(json.loads(payload)["value"]).encode())
        prepared = session.prepare_request(requests.Request("POST", url, data=line))
        total += len(line) + header_bytes(prepared)
    return WireResult("baseline: one POST per reading (body + headers)", n, n, n, total)


def table(results: list[WireResult]) -> str:
    base = results[-1].per_reading
    rows = [
        "| what is sent | lines sent | requests | bytes | bytes per reading | vs baseline "
        "| CPU µs/reading |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cpu = f"{r.cpu_seconds / r.readings * 1e6:.1f}" if r.cpu_seconds else "n/a"
        ratio = "1x" if r is results[-1] else f"{base / r.per_reading:,.0f}x less"
        rows.append(
            f"| {r.mode} | {r.lines_sent:,} | {r.requests:,} | {r.body_bytes:,} "
            f"| {r.per_reading:.2f} | {ratio} | {cpu} |"
        )
    return "\n".join(rows)


def run(mqtt: Mosquitto, influx: InfluxDB1, workdir: Path, n: int, timeout: float) -> str:
    results = [run_mode(mqtt, influx, workdir, mode, n, timeout) for mode in MODES]
    results.append(baseline("bench", n))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return table(results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__)
    p.add_argument("--messages", type=int, default=60_000, help="N readings per mode")
    p.add_argument("--timeout", type=float, default=180.0)
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-wire-"))
    mqtt = Mosquitto(workdir / "mosquitto", autosave_interval=0)
    influx = InfluxDB1(workdir / "influxdb")
    try:
        mqtt.start()
        influx.start()
        print(run(mqtt, influx, workdir, args.messages, args.timeout))
    finally:
        influx.stop()
        mqtt.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"results in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
