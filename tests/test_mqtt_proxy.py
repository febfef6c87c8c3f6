"""The MQTT proxy's packet framing: PUBACKs written back to back, packets split across reads."""

import pytest
from mqtt_proxy import MalformedPacketError, take_packets

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
