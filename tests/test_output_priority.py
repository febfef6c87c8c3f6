"""Streams through one output during and after an outage: the agent's telemetry goes first, then
aggregates, then raw, whatever the config order, and a failing server gets one probe at a time,
not max_in_flight retries."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fault_server import FaultServer
from output_rig import Rig, lines

MAX_IN_FLIGHT = 4


def aggregate_lines(n: int) -> list[str]:
    return [f"m_1m,sensor=s{i % 7} mean={i}.5 {1_700_000_000_000_000_000 + i}" for i in range(n)]


async def read_to_the_end(rig: Rig, stream: str) -> None:
    """Until every line of ``stream`` has been read into a batch, i.e. waits at the gate."""
    for _ in range(1000):
        head = rig.spool.read_heads.get(("cloud", stream))
        if head is not None and await rig.spool.backlog(stream, head) == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{stream} was never read to the end")


def first_write_holds_aggregates(server: FaultServer, aggregates: list[str]) -> int:
    """Checks the first accepted write is all aggregates; returns how many accepted writes it
    took to have every aggregate line."""
    accepted = server.accepted
    assert set(accepted[0]) <= set(aggregates), "the first write after recovery was raw"
    wanted = set(aggregates)
    for count, batch in enumerate(accepted, 1):
        wanted -= set(batch)
        if not wanted:
            return count
    raise AssertionError("not every aggregate line was accepted")


async def test_aggregates_first_and_one_probe_at_a_time(tmp_path: Path) -> None:
    raw, aggregates = lines(20_000), aggregate_lines(300)
    with FaultServer(outage=503, hold=0.02) as server:
        async with Rig(
            tmp_path,
            server,
            streams=["raw", "aggregates"],  # raw first on purpose: the order must not matter
            batch_size=200,
            max_in_flight=MAX_IN_FLIGHT,
            retry_max_backoff=0.1,
        ) as rig:
            for i in range(0, len(raw), 2000):
                await rig.spool.ingest("raw", raw[i : i + 2000])
            await rig.spool.ingest("aggregates", aggregates)
            await read_to_the_end(rig, "aggregates")
            seen = len(server.requests)
            await rig.wait(lambda: len(server.requests) >= max(seen, MAX_IN_FLIGHT) + 5)
            server.outage = None
            await rig.wait(lambda: len(server.lines) == len(raw) + len(aggregates))
            await rig.wait(lambda: all(s.lines == 0 for s in rig.spool.stats.values()))
            assert rig.output.healthy

        failed = sorted((r for r in server.requests if r.status == 503), key=lambda r: r.at)
        # Until the first answer came back, up to max_in_flight writes were out (the gate was
        # open); after that, one probe at a time.
        assert len(failed) >= MAX_IN_FLIGHT + 5
        assert [r.in_flight for r in failed[MAX_IN_FLIGHT:]] == [1] * (len(failed) - MAX_IN_FLIGHT)
        assert rig.metric("edge_output_retries_total") == len(failed)

        # Both aggregate batches were waiting: the probe that succeeded carried the first, the
        # second was granted before any raw batch, beside at most max_in_flight - 1 raw ones.
        assert first_write_holds_aggregates(server, aggregates) <= MAX_IN_FLIGHT + 1
        accepted = server.lines
        last_raw = max(i for i, line in enumerate(accepted) if line.startswith("m,"))
        assert all(accepted.index(line) < last_raw for line in aggregates)
        # Nothing lost, nothing twice: no batch was accepted and then resent.
        assert sorted(accepted) == sorted(raw + aggregates)


async def test_connection_refused_then_aggregates_first(tmp_path: Path) -> None:
    raw, aggregates = lines(3000), aggregate_lines(50)
    with FaultServer() as server:
        server.stop()  # the port stays known: connections to it are refused until start()
        async with Rig(
            tmp_path,
            server,
            streams=["raw", "aggregates"],
            batch_size=500,
            max_in_flight=MAX_IN_FLIGHT,
            retry_max_backoff=0.1,
        ) as rig:
            await rig.spool.ingest("raw", raw)
            await rig.spool.ingest("aggregates", aggregates)
            await read_to_the_end(rig, "aggregates")
            await rig.wait(lambda: rig.metric("edge_output_retries_total") >= MAX_IN_FLIGHT + 2)
            assert rig.metric("edge_output_requests_total", outcome="connection_error") >= 1
            server.start()
            await rig.wait(lambda: len(server.lines) == len(raw) + len(aggregates))
        assert first_write_holds_aggregates(server, aggregates) == 1  # 50 lines: one batch
        assert sorted(server.lines) == sorted(raw + aggregates)


async def test_connection_refused_then_telemetry_then_aggregates_then_raw(tmp_path: Path) -> None:
    raw, aggregates = lines(3000), aggregate_lines(50)
    telemetry = [
        f"edge_agent,agent=gw received={i}i {1_700_000_000_000_000_000 + i}" for i in range(20)
    ]
    with FaultServer() as server:
        server.stop()
        async with Rig(
            tmp_path,
            server,
            streams=["raw", "aggregates", "telemetry"],
            batch_size=500,
            max_in_flight=1,  # one write at a time: the order of writes is the gate's order
            retry_max_backoff=0.1,
        ) as rig:
            await rig.spool.ingest("raw", raw)
            await rig.spool.ingest("aggregates", aggregates)
            await rig.spool.ingest("telemetry", telemetry)
            await read_to_the_end(rig, "telemetry")
            await rig.wait(lambda: rig.metric("edge_output_retries_total") >= 3)
            server.start()
            await rig.wait(lambda: len(server.lines) == len(raw) + len(aggregates) + 20)
        first, second = server.accepted[:2]
        assert first == telemetry and second == aggregates
        assert sorted(server.lines) == sorted(raw + aggregates + telemetry)
