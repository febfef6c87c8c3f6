"""The ack shim reaches into aiomqtt for paho's manual ack and the DUP flag: these tests break
if either library changes underneath."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.source.ack import Received, attach
from agent.tools.localservers import Mosquitto
from agent.tools.simulate import Publisher


def client(port: int) -> aiomqtt.Client:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    props.ReceiveMaximum = 100
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier="shim-test",
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=props,
    )


async def test_aiomqtt_still_wraps_a_paho_client() -> None:
    c = client(1)
    assert isinstance(c._client, paho.Client)
    assert callable(c._client.manual_ack_set) and callable(c._client.ack)
    # ack.py queues grouped PUBACKs itself and replaces the per-topic callback matcher.
    assert callable(c._client._packet_queue)
    assert hasattr(c._client, "_on_message_filtered")
    # ack.py decodes the raw topic bytes itself (paho's ``topic`` raises on bytes not UTF-8).
    message = paho.MQTTMessage(topic=b"a/\xff")
    assert message._topic == b"a/\xff"


async def collect(port: int, want: int, ack: bool) -> list[Received]:
    got: list[Received] = []
    c = client(port)
    acker = attach(c, got.append)
    async with c:
        await c.subscribe("shim/#", qos=1)
        for _ in range(200):
            if len(got) >= want:
                break
            await asyncio.sleep(0.02)
        if ack:
            for m in got:
                acker.ack(m.mid, m.qos)
            await asyncio.sleep(0.2)
    return got


async def test_unacked_messages_come_back_with_dup_and_same_ids(mosquitto: Mosquitto) -> None:
    await collect(mosquitto.port, 0, ack=True)  # create the persistent session
    pub = Publisher(mosquitto.url, "shim-pub", qos=1)
    for i in range(5):
        pub.publish("shim/a", str(i))
    assert pub.wait_acked(5, timeout=10)
    pub.close()
    first = await collect(mosquitto.port, 5, ack=False)
    assert [m.payload for m in first] == [str(i).encode() for i in range(5)]
    assert not any(m.dup for m in first)
    again = await collect(mosquitto.port, 5, ack=True)
    assert [(m.mid, m.payload) for m in again] == [(m.mid, m.payload) for m in first]
    assert all(m.dup for m in again)
    assert await collect(mosquitto.port, 1, ack=True) == []  # acknowledged: gone for good


async def test_ids_and_dup_survive_a_broker_restart(tmp_path: Path, mosquitto: Mosquitto) -> None:
    await collect(mosquitto.port, 0, ack=True)
    pub = Publisher(mosquitto.url, "shim-pub", qos=1)
    for i in range(3):
        pub.publish("shim/b", str(i))
    assert pub.wait_acked(3, timeout=10)
    pub.close()
    first = await collect(mosquitto.port, 3, ack=False)
    mosquitto.restart()
    again = await collect(mosquitto.port, 3, ack=True)
    assert [(m.mid, m.payload) for m in again] == [(m.mid, m.payload) for m in first]
    assert all(m.dup for m in again)
