"""The two things the agent needs from MQTT that aiomqtt does not expose: manual PUBACK and the
DUP flag. Both live on the paho client that aiomqtt wraps; this module is the only place that
reaches for it, and tests/test_ack_shim.py breaks if aiomqtt or paho change underneath.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.matcher import MQTTMatcher


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
_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id


class Intake:
    """Manual PUBACK, and a socket reader the source can pause and rest.

    Pausing matters because a broker may send more than the Receive Maximum we announced
    (mosquitto 2.0.11 stops counting after the first PUBACK): with the reader paused, TCP flow
    control makes the broker keep the surplus, instead of our memory.

    Resting matters at a steady rate. Messages then arrive one by one, and a wakeup of the event
    loop per message costs more than the message itself; but a group commit lingers anyway, so
    the reader may rest while it does (``rest_for`` says how long) and read what piled up in the
    socket in one go. The commit drains the socket first, so no message waits longer for it.
    """

    def __init__(self, client: paho.Client, rest_for: Callable[[], float]) -> None:
        self._client = client
        self._rest_for = rest_for
        self._resting: asyncio.TimerHandle | None = None
        self.paused = False

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.ack_all([mid])

    def ack_all(self, mids: Sequence[int]) -> None:
        """PUBACK these QoS 1 messages in one queued write. paho's own ``ack`` queues a packet
        per message (a dict, a wakeup byte and a send call each); for a commit of a thousand
        messages that cost a tenth of the agent's CPU and a few hundred kB at the peak."""
        if mids:
            packet = b"".join([_PUBACK.pack(paho.PUBACK, 2, mid) for mid in mids])
            self._client._packet_queue(paho.PUBACK, packet, 0, 0)

    def pause(self) -> None:
        sock = self._client.socket()
        if self.paused or sock is None:
            return
        self.paused = True
        if self._resting is not None:
            self._resting.cancel()
            self._resting = None
        else:
            asyncio.get_running_loop().remove_reader(sock.fileno())

    def resume(self) -> None:
        sock = self._client.socket()
        if not self.paused or sock is None:
            return
        self.paused = False
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def after_read(self, drained: bool) -> None:
        """Rest the reader if the socket is drained and the source says so (see the class
        docstring). Not drained (a wakeup's read limit was reached): keep reading."""
        if not drained or self.paused or self._resting is not None:
            return
        delay = self._rest_for()
        sock = self._client.socket()
        if delay <= 0 or sock is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        self._resting = loop.call_later(delay, self.wake)

    def wake(self) -> None:
        """End a rest: read again as messages come."""
        if self._resting is None:
            return
        self._resting.cancel()
        self._resting = None
        sock = self._client.socket()
        if not self.paused and sock is not None:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def drain(self) -> None:
        """Read now whatever the socket holds: a commit is due (and the reader may have rested
        until this very moment)."""
        if not self.paused:
            self._readable()

    def _readable(self) -> None:
        """The same work as aiomqtt's own reader, which ``pause`` removed."""
        try:
            self._client.loop_read()
            sock = self._client.socket()
            while sock is not None and getattr(sock, "pending", lambda: 0)() > 0:
                self._client.loop_read()
        except Exception:  # the connection is broken: let paho report the disconnect
            self._client.disconnect()


class _NoTopicCallbacks(MQTTMatcher):
    """paho looks every message up among its per-topic callbacks, and the lookup leaves a
    reference cycle (a self-referencing closure) per message. With the collector's thresholds
    raised that garbage piled up to about 2.5 MB per burst. The agent registers no such
    callbacks, so there is nothing to look up."""

    def iter_match(self, topic: str) -> Iterator[Any]:
        return iter(())


def attach(
    client: aiomqtt.Client,
    deliver: Callable[[Received], None],
    rest_for: Callable[[], float] = lambda: 0.0,
) -> Intake:
    """Route raw paho messages to ``deliver`` and switch off paho's automatic acknowledgement.

    Must be called before the client connects: a persistent session's queued messages arrive
    right after CONNACK. Bypassing aiomqtt's per-message Task and queue also keeps the hot path
    short (one tuple per message).
    """
    inner: paho.Client = client._client  # aiomqtt's wrapped paho client
    inner.manual_ack_set(True)
    inner._on_message_filtered = _NoTopicCallbacks()  # type: ignore[no-untyped-call]
    intake = Intake(inner, rest_for)
    delivered = [0]

    def on_message(_client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        delivered[0] += 1
        payload = bytes(message.payload)  # the same object when it is already bytes
        # paho's ``topic`` decodes strictly and would raise inside its read loop (dropping the
        # connection, again at every redelivery); escapes let the mapper refuse it instead.
        topic = message._topic.decode("utf-8", "surrogateescape")
        deliver(Received(topic, payload, message.mid, message.qos, message.dup))

    inner.on_message = on_message
    inner.loop_read = _draining(inner.loop_read, delivered, intake)  # type: ignore[method-assign]
    return intake


def _draining(
    loop_read: Callable[[], MQTTErrorCode], delivered: list[int], intake: Intake
) -> Callable[..., MQTTErrorCode]:
    """paho reads one packet per ``loop_read`` and aiomqtt calls it once per readable event,
    which costs an event-loop turn and an epoll call per message. Keep reading while packets
    keep coming (bounded, so other tasks still run), unless the intake was paused."""

    def loop_read_many(max_packets: int = 1) -> MQTTErrorCode:
        rc = loop_read()
        drained = False
        for _ in range(READS_PER_WAKEUP - 1):
            before = delivered[0]
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or intake.paused:
                drained = True
                break
            rc = loop_read()
            if delivered[0] == before:
                drained = True
                break
        intake.after_read(drained)
        return rc

    return loop_read_many
