"""The fault double must itself behave, or tests built on it prove nothing."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from fault_server import FaultServer


@pytest.fixture
def fault() -> Iterator[FaultServer]:
    server = FaultServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def _post(
    http: aiohttp.ClientSession,
    url: str,
    body: str,
    *,
    compress: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, dict[str, str]]:
    data = gzip.compress(body.encode()) if compress else body.encode()
    hdrs = {"Content-Encoding": "gzip"} if compress else {}
    hdrs.update(headers or {})
    async with http.post(url, data=data, headers=hdrs) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def test_accepts_plain_and_gzip_on_both_paths(
    fault: FaultServer, http: aiohttp.ClientSession
) -> None:
    body = "m,t=a value=1 1\nm,t=a value=2 2\n"
    status, _, _ = await _post(http, f"{fault.url}/write?db=x&precision=ns", body)
    assert status == 204
    status, _, _ = await _post(http, f"{fault.url}/api/v2/write?bucket=b", body, compress=True)
    assert status == 204

    assert fault.accepted == [["m,t=a value=1 1", "m,t=a value=2 2"]] * 2
    plain, gz = fault.requests
    assert (plain.path, plain.lines, plain.gzip, plain.query["db"]) == ("/write", 2, False, "x")
    assert (gz.path, gz.gzip, gz.query["bucket"]) == ("/api/v2/write", True, "b")
    assert plain.wire_bytes == plain.body_bytes == len(body)
    assert gz.body_bytes == len(body) and gz.wire_bytes == len(gzip.compress(body.encode()))
    assert plain.at <= gz.at


async def test_script_answers_first_then_normal(
    fault: FaultServer, http: aiohttp.ClientSession
) -> None:
    fault.script([(429, {"Retry-After": "2"}), (503, {}), (500, {})])
    answers = [await _post(http, f"{fault.url}/write?db=x", "m value=1 1") for _ in range(4)]
    assert [a[0] for a in answers] == [429, 503, 500, 204]
    assert answers[0][2]["Retry-After"] == "2"
    assert json.loads(answers[1][1]) == {"error": "scripted 503"}
    assert fault.scripted_left == 0
    assert fault.lines == ["m value=1 1"]  # scripted answers accept nothing
    assert [r.status for r in fault.requests] == [429, 503, 500, 204]


async def test_413_counts_uncompressed_bytes(
    fault: FaultServer, http: aiohttp.ClientSession
) -> None:
    fault.max_body_bytes = 100
    big = "".join(f"m value=1 {i}\n" for i in range(20))  # > 100 bytes, gzips well below
    status, text, _ = await _post(http, f"{fault.url}/write", big, compress=True)
    assert status == 413 and "Too Large" in text
    assert fault.requests[0].wire_bytes < 100 < fault.requests[0].body_bytes
    status, _, _ = await _post(http, f"{fault.url}/write", "m value=1 1\n")
    assert status == 204
    assert fault.lines == ["m value=1 1"]


async def test_bad_marker_rejects_the_whole_batch(
    fault: FaultServer, http: aiohttp.ClientSession
) -> None:
    fault.bad_marker = "POISON"
    body = "m value=1 1\nm,t=POISON value=2 2\nm value=3 3"
    status, text, _ = await _post(http, f"{fault.url}/write", body)
    assert status == 400
    assert json.loads(text) == {
        "error": "unable to parse 'm,t=POISON value=2 2': invalid field format"
    }
    assert fault.lines == []
    status, _, _ = await _post(http, f"{fault.url}/write", "m value=1 1\nm value=3 3")
    assert status == 204
    assert fault.lines == ["m value=1 1", "m value=3 3"]


async def test_auth_token(fault: FaultServer, http: aiohttp.ClientSession) -> None:
    fault.auth_token = "s3cret"
    url = f"{fault.url}/api/v2/write"
    assert (await _post(http, url, "m value=1 1"))[0] == 401
    bad = {"Authorization": "Token nope"}
    assert (await _post(http, url, "m value=1 1", headers=bad))[0] == 401
    good = {"Authorization": "Token s3cret"}
    assert (await _post(http, url, "m value=2 2", headers=good))[0] == 204
    assert fault.lines == ["m value=2 2"]


async def test_bad_gzip_is_a_400(fault: FaultServer, http: aiohttp.ClientSession) -> None:
    hdrs = {"Content-Encoding": "gzip"}
    async with http.post(f"{fault.url}/write", data=b"not gzip", headers=hdrs) as resp:
        assert resp.status == 400
    assert fault.lines == []


async def test_concurrent_requests_are_all_recorded(
    fault: FaultServer, http: aiohttp.ClientSession
) -> None:
    posts = [_post(http, f"{fault.url}/write", f"m value={i} {i}") for i in range(50)]
    assert {a[0] for a in await asyncio.gather(*posts)} == {204}
    assert sorted(fault.lines) == sorted(f"m value={i} {i}" for i in range(50))
    assert len(fault.requests) == 50


async def test_stop_then_start_on_the_same_port(http: aiohttp.ClientSession) -> None:
    with FaultServer() as fault:
        port = fault.port
        assert (await _post(http, f"{fault.url}/write", "m value=1 1"))[0] == 204
        fault.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            await _post(http, f"{fault.url}/write", "m value=1 1")
        fault.start()
        assert fault.port == port
        assert (await _post(http, f"{fault.url}/write", "m value=2 2"))[0] == 204
    assert fault.lines == ["m value=1 1", "m value=2 2"]


async def test_outage_answers_every_write_until_lifted(
    fault: FaultServer, http: aiohttp.ClientSession
) -> None:
    fault.outage = 503
    assert (await _post(http, f"{fault.url}/write", "m value=1 1"))[0] == 503
    fault.outage = None
    assert (await _post(http, f"{fault.url}/write", "m value=2 2"))[0] == 204
    assert fault.lines == ["m value=2 2"]


async def test_held_answers_show_overlapping_requests(
    fault: FaultServer, http: aiohttp.ClientSession
) -> None:
    fault.hold = 0.5  # long enough that the pair overlaps even on a loaded machine
    await _post(http, f"{fault.url}/write", "m value=0 0")
    await asyncio.gather(*(_post(http, f"{fault.url}/write", f"m value={i} {i}") for i in (1, 2)))
    first, *pair = fault.requests
    assert first.in_flight == 1
    assert sorted(r.in_flight for r in pair) == [1, 2]
