"""The two things the agent needs from MQTT that aiomqtt does not expose: manual PUBACK and the
DUP flag. Both live on the paho client that aiomqtt wraps; this module is the only place that
reaches for it, and tests/test_ack_shim.py breaks if aiomqtt or paho change underneath.
"""

from __future__ import annotations

from collections.abc import Callable

import aiomqtt
import paho.mqtt.client as paho

Message = paho.MQTTMessage


class Acker:
    """Sends the PUBACK for a message once its reading is committed to the spool."""

    def __init__(self, client: paho.Client) -> None:
        self._client = client

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self._client.ack(mid, qos)


def attach(client: aiomqtt.Client, deliver: Callable[[Message], None]) -> Acker:
    """Route raw paho messages to ``deliver`` and switch off paho's automatic acknowledgement.

    Must be called before the client connects: a persistent session's queued messages arrive
    right after CONNACK. Bypassing aiomqtt's per-message Task and queue also keeps the hot path
    short (one list append per message).
    """
    inner: paho.Client = client._client  # aiomqtt's wrapped paho client
    inner.manual_ack_set(True)

    def on_message(_client: paho.Client, _userdata: object, message: Message) -> None:
        deliver(message)

    inner.on_message = on_message
    return Acker(inner)
