"""Smoke tests of the real test servers: they start, take line protocol, keep data over restarts.

They also pin the server behaviour the agent relies on (InfluxDB upserts and partial writes,
VictoriaMetrics' millisecond timestamps, mosquitto's persistent QoS 1 queue), so a different
server version that breaks an assumption fails here first.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.tools.localservers import (
    BinaryMissingError,
    InfluxDB1,
    Mosquitto,
    ServerError,
    VictoriaMetrics,
    free_port,
)

T0 = 1_700_000_000_000_000_000  # a fixed ns timestamp, far from "now"


def _post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


# --- InfluxDB 1.x ---------------------------------------------------------------------------
def test_influxdb_counts_exactly_upserts_and_survives_sigkill(influxdb: InfluxDB1) -> None:
    influxdb.create_database("plant")
    lines = "\n".join(f"temp,site=a\\ b,dev=d{i % 3} value={i} {T0 + i}" for i in range(100))
    influxdb.write("plant", lines, gzip=True)
    influxdb.write("plant", lines)  # a replay of the same points is an upsert, not a duplicate
    assert influxdb.count("plant", "temp") == 100
    rows = influxdb.rows("plant", "temp")
    assert len({(r["time"], r["dev"]) for r in rows}) == 100
    assert rows[0] == {"time": T0, "dev": "d0", "site": "a b", "value": 0}

    influxdb.kill()  # a 204 means fsynced to the WAL: nothing may be lost
    influxdb.start()
    assert influxdb.count("plant", "temp") == 100


def test_influxdb_16_quirks_the_agent_must_handle(influxdb: InfluxDB1) -> None:
    influxdb.create_database("plant")
    # No v2 compatibility API before InfluxDB 1.8: the agent must use /write?db=.
    assert _post(f"{influxdb.url}/api/v2/write?bucket=plant", b"m value=1") == 404
    # A 400 with a bad line is a partial write: the good lines of the batch are stored.
    body = f"m value=1 {T0}\nm value=oops {T0 + 1}\nm value=3 {T0 + 2}".encode()
    assert _post(f"{influxdb.url}/write?db=plant", body) == 400
    assert influxdb.count("plant", "m") == 2
    with pytest.raises(ServerError, match="database not found"):
        influxdb.query("nodb", 'SELECT * FROM "m"')


# --- VictoriaMetrics ------------------------------------------------------------------------
def test_victoria_keeps_ms_timestamps_and_survives_sigterm(victoria: VictoriaMetrics) -> None:
    lines = "\n".join(f"temp,dev=d{i % 2} value={i} {T0 + i * 1_000_000 + 7}" for i in range(10))
    victoria.write(lines, gzip=True)
    series = victoria.wait_for_samples('{__name__="temp_value"}', 10)
    assert {s["metric"]["dev"] for s in series} == {"d0", "d1"}
    stamps = sorted(t for s in series for t in s["timestamps"])
    assert stamps == [(T0 + i * 1_000_000) // 1_000_000 for i in range(10)]  # ns -> ms, floor

    victoria.restart()  # SIGTERM flushes everything to disk
    assert victoria.samples('{__name__="temp_value"}') == 10


def test_victoria_does_not_upsert(victoria: VictoriaMetrics) -> None:
    """Same point twice = two samples: exact counts on VM need dedup or unique timestamps."""
    victoria.write(f"dup value=1 {T0}")
    victoria.write(f"dup value=1 {T0}")
    victoria.wait_for_samples("dup_value", 2)
    assert victoria.samples("dup_value") == 2


# --- mosquitto ------------------------------------------------------------------------------
class _Subscriber:
    """A persistent MQTT v5 session (clean_start=False, session expiry) collecting messages."""

    def __init__(self, port: int, client_id: str) -> None:
        self.messages: list[bytes] = []
        self.session_present: bool | None = None
        self.got = threading.Event()
        self._connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        if not self._connected.wait(5):
            self.close()
            raise TimeoutError(f"no CONNACK from 127.0.0.1:{port} within 5 s")

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        self.session_present = flags.session_present
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.messages.append(bytes(msg.payload))
        self.got.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(port: int, topic: str, payload: bytes) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="smoke-pub", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        pub.publish(topic, payload, qos=1).wait_for_publish(timeout=5)
    finally:
        pub.disconnect()
        pub.loop_stop()


def test_mosquitto_restart_keeps_queued_qos1_for_offline_session(mosquitto: Mosquitto) -> None:
    sub = _Subscriber(mosquitto.port, "smoke-sub")
    sub.client.subscribe("plant/#", qos=1)
    time.sleep(0.2)  # let SUBACK land before going offline
    sub.close()

    _publish(mosquitto.port, "plant/a/temp", b"21.5")  # queued for the offline session
    mosquitto.restart()  # SIGTERM: the broker saves sessions and queues to its db

    sub = _Subscriber(mosquitto.port, "smoke-sub")
    try:
        assert sub.session_present is True
        assert sub.got.wait(5), f"queued message lost over restart\n{mosquitto.log_tail()}"
        assert sub.messages == [b"21.5"]
    finally:
        sub.close()
    assert (mosquitto.data_dir / "mosquitto-db" / "mosquitto.db").exists()


# --- the harness itself ---------------------------------------------------------------------
def test_start_refuses_a_port_taken_by_someone_else(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        server = Mosquitto(tmp_path, port=other.getsockname()[1])
        with pytest.raises(ServerError, match="already taken"):
            server.start()
    assert server.pid is None


def test_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    class Nope(VictoriaMetrics):
        binary = "no-such-server-binary"

    with pytest.raises(BinaryMissingError, match="scripts/dev test"):
        Nope(tmp_path).start()


def test_free_port_never_repeats() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
