"""The MQTT proxy double: its packet framing (PUBACKs written back to back, packets split across
reads), and that a real broker resends what it swallowed."""

import queue
import threading
import time

import paho.mqtt.client as paho
import pytest
from mqtt_proxy import PUBACK, MalformedPacketError, MqttProxy, take_packets
from paho.mqtt.enums import CallbackAPIVersion

from agent.tools.localservers import Mosquitto
from agent.tools.simulate import Publisher

PUBACKS = [bytes([0x40, 2, 0, mid]) for mid in (1, 2, 3)]
PUBLISH = bytes([0x32, 0xC8, 0x01]) + bytes(200)  # remaining length 200: two bytes
PACKETS = [PUBACKS[0], PUBLISH, *PUBACKS[1:], bytes([0xA2, 0])]
STREAM = b"".join(PACKETS)


@pytest.mark.parametrize("read_size", [1, 2, 3, 7, len(STREAM)])
def test_a_stream_is_cut_into_its_packets_whatever_the_reads(read_size: int) -> None:
    buffer = bytearray()
    got: list[bytes] = []
    for start in range(0, len(STREAM), read_size):
        buffer += STREAM[start : start + read_size]
        got += take_packets(buffer)
    assert got == PACKETS and not buffer


def test_a_remaining_length_beyond_four_bytes_is_refused() -> None:
    with pytest.raises(MalformedPacketError):
        take_packets(bytearray([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))


def test_a_swallowed_puback_makes_the_real_broker_redeliver_after_a_drop(
    mosquitto: Mosquitto,
) -> None:
    proxy = MqttProxy(mosquitto.port)
    proxy.start()
    subscribed = threading.Event()
    received: queue.Queue[tuple[bytes, int, bool]] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="through", clean_session=False)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, m: received.put((bytes(m.payload), m.mid, m.dup))
    client.reconnect_delay_set(1, 1)
    try:
        client.connect("127.0.0.1", proxy.port)
        client.loop_start()
        client.subscribe("t", qos=1)
        assert subscribed.wait(10)
        proxy.swallow = True
        pub = Publisher(mosquitto.url, "pub", qos=1)
        pub.publish("t", "x")
        payload, mid, dup = received.get(timeout=10)
        assert (payload, dup) == (b"x", False)
        deadline = time.monotonic() + 10
        while proxy.swallowed[PUBACK] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.swallowed[PUBACK] == 1
        proxy.swallow = False
        proxy.drop()  # paho reconnects to the same session
        assert received.get(timeout=10) == (b"x", mid, True)
        pub.close()
    finally:
        client.loop_stop()
        proxy.stop()
