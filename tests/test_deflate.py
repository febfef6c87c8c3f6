"""The spool's stored segments and the single gzip member an output makes of them."""

from __future__ import annotations

import gzip
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.spool.deflate import Compressor, crc_combine, gzip_member, inflate

texts = st.lists(st.binary(max_size=3000), min_size=1, max_size=12)


@settings(max_examples=200)
@given(a=st.binary(max_size=5000), b=st.binary(max_size=5000))
def test_crc_combine_equals_the_crc_of_the_concatenation(a: bytes, b: bytes) -> None:
    assert crc_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@settings(max_examples=200)
@given(parts=texts)
def test_segments_laid_end_to_end_are_one_gzip_member_of_their_texts(parts: list[bytes]) -> None:
    compressor = Compressor()
    segments = [compressor.segment(part) for part in parts]
    assert [inflate(s.data) for s in segments] == parts  # each decodes alone too
    body = gzip_member(segments)
    assert gzip.decompress(body) == b"".join(parts)
    # one member, not several: a decoder that stops after the first still gets every byte
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body) == b"".join(parts)


def test_a_subset_of_segments_from_anywhere_in_the_stream_is_a_member_too() -> None:
    compressor = Compressor()
    lines = [f"m,t=s{i} value={i} {i}\n".encode() for i in range(300)]
    segments = [compressor.segment(b"".join(lines[i : i + 30])) for i in range(0, 300, 30)]
    assert gzip.decompress(gzip_member(segments[3:7])) == b"".join(lines[90:210])
