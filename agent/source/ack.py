"""The two things the agent needs from MQTT that aiomqtt does not expose: manual PUBACK and the
DUP flag. Both live on the paho client that aiomqtt wraps; this module is the only place that
reaches for it, and tests/test_ack_shim.py breaks if aiomqtt or paho change underneath.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode


class Received(NamedTuple):
    """What the pipeline keeps of a message: paho's MQTTMessage (with its v5 Properties,
    MQTTMessageInfo and Condition) is dropped at once, so it never lives long enough for the
    garbage collector to traverse it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool


READS_PER_WAKEUP = 256


class Acker:
    """Sends the PUBACK for a message once its reading is committed to the spool."""

    def __init__(self, client: paho.Client) -> None:
        self._client = client

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self._client.ack(mid, qos)


def attach(client: aiomqtt.Client, deliver: Callable[[Received], None]) -> Acker:
    """Route raw paho messages to ``deliver`` and switch off paho's automatic acknowledgement.

    Must be called before the client connects: a persistent session's queued messages arrive
    right after CONNACK. Bypassing aiomqtt's per-message Task and queue also keeps the hot path
    short (one list append per message).
    """
    inner: paho.Client = client._client  # aiomqtt's wrapped paho client
    inner.manual_ack_set(True)
    delivered = [0]

    def on_message(_client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        delivered[0] += 1
        payload = bytes(message.payload)  # the same object when it is already bytes
        deliver(Received(message.topic, payload, message.mid, message.qos, message.dup))

    inner.on_message = on_message
    inner.loop_read = _draining(inner.loop_read, delivered)  # type: ignore[method-assign]
    return Acker(inner)


def _draining(
    loop_read: Callable[[], MQTTErrorCode], delivered: list[int]
) -> Callable[..., MQTTErrorCode]:
    """paho reads one packet per ``loop_read`` and aiomqtt calls it once per readable event,
    which costs an event-loop turn and an epoll call per message. Keep reading while packets
    keep coming (bounded, so other tasks still run)."""

    def loop_read_many(max_packets: int = 1) -> MQTTErrorCode:
        rc = loop_read()
        for _ in range(READS_PER_WAKEUP - 1):
            before = delivered[0]
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            rc = loop_read()
            if delivered[0] == before:
                break
        return rc

    return loop_read_many
