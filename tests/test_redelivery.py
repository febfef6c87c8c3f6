from pathlib import Path

import pytest

from agent.source.redelivery import RedeliveryGuard, digest
from agent.spool.budget import Budget
from agent.spool.store import Records, Spool

D = digest("t/a", b"1.5")
E = digest("t/a", b"2.5")


def guard_after_crash(records: dict[int, tuple[int, bytes]]) -> RedeliveryGuard:
    guard = RedeliveryGuard()
    guard.start_connection(2, records)
    return guard


def test_redelivery_after_reconnect_is_recognised() -> None:
    guard = guard_after_crash({7: (1, D)})
    assert guard.is_redelivery(7, True, D)


def test_records_of_the_live_connection_are_never_candidates() -> None:
    guard = RedeliveryGuard()
    guard.start_connection(1, {7: (1, D)})
    assert not guard.is_redelivery(7, True, D)


def test_without_dup_or_with_other_content_it_is_new() -> None:
    for mid, dup, d in [
        (7, False, D),
        (7, True, digest("t/a", b"1.6")),
        (7, True, digest("t/b", b"1.5")),
        (8, True, D),
    ]:
        assert not guard_after_crash({7: (1, D)}).is_redelivery(mid, dup, d)


def test_first_miss_ends_the_redelivery_phase_and_purges() -> None:
    guard = guard_after_crash({7: (1, D), 8: (1, D)})
    assert guard.is_redelivery(7, True, D)
    assert not guard.is_redelivery(9, False, D)
    assert not guard.is_redelivery(8, True, D)  # a redelivery cannot follow a new message
    assert not guard.in_redelivery_phase
    assert guard.take_settled() == (None, 2)
    assert guard.take_settled() == (None, None)


def test_records_settle_only_when_a_barrier_returns() -> None:
    guard = RedeliveryGuard()
    guard.start_connection(1, {})
    assert guard.begin_barrier() is None  # nothing committed: nothing to prove
    for commit in (1, 2):
        assert guard.next_commit == commit
        guard.committed(commit)
    through = guard.begin_barrier()
    guard.committed(3)  # its PUBACKs queue behind the UNSUBSCRIBE: not covered
    assert through == 2 and guard.take_settled() == (None, None)
    guard.end_barrier(2)
    assert guard.take_settled() == (2, None)
    assert guard.take_settled() == (None, None)
    assert guard.begin_barrier() == 3


def test_a_failed_barrier_is_covered_by_the_next() -> None:
    guard = RedeliveryGuard()
    guard.start_connection(1, {})
    guard.committed(1)
    assert guard.begin_barrier() == 1
    guard.barrier_failed()
    assert guard.begin_barrier() == 1
    guard.committed(2)
    guard.barrier_failed()
    assert guard.begin_barrier() == 2


def test_a_new_connection_numbers_its_commits_afresh() -> None:
    guard = RedeliveryGuard()
    guard.start_connection(1, {})
    guard.committed(5)
    guard.start_connection(2, {})
    assert guard.next_commit == 1 and guard.begin_barrier() is None


def test_digest_separates_topic_and_payload() -> None:
    assert digest("a/b", b"c") != digest("a/", b"bc")


# The guard against a real spool, recording what MqttSource._commit records: the (packet id,
# digest) of every QoS 1 message a commit acknowledges, matched redeliveries included.


async def open_spool(tmp_path: Path) -> Spool:
    budget = Budget(max_size=1 << 20, max_age=86400, min_free_disk=0, when_full="drop_oldest")
    spool = Spool(tmp_path / "spool.db", budget, "full")
    await spool.open()
    return spool


async def connect(spool: Spool) -> RedeliveryGuard:
    guard = RedeliveryGuard()
    guard.start_connection(await spool.next_connection(), await spool.load_unacked())
    return guard


async def commit(
    spool: Spool, guard: RedeliveryGuard, acknowledged: list[tuple[int, bytes]]
) -> None:
    settled, purge = guard.take_settled()
    records = Records(guard.connection, guard.next_commit, acknowledged, settled, purge)
    assert (await spool.ingest("raw", [], records=records)).committed
    guard.committed(records.commit)


@pytest.mark.parametrize("one_commit", [True, False])
async def test_a_redelivery_acknowledged_again_outlives_the_purge_and_the_next_crash(
    tmp_path: Path, one_commit: bool
) -> None:
    spool = await open_spool(tmp_path)
    first = await connect(spool)
    await commit(spool, first, [(7, D)])  # its PUBACK is never processed: crash

    second = await connect(spool)
    assert second.is_redelivery(7, True, D)
    if not one_commit:
        await commit(spool, second, [(7, D)])
    assert not second.is_redelivery(8, False, E)  # a new message: the purge is due
    await commit(spool, second, [(7, D), (8, E)] if one_commit else [(8, E)])
    assert await spool.load_unacked() == {7: (second.connection, D), 8: (second.connection, E)}

    third = await connect(spool)  # crashed again before any of those PUBACKs was processed
    assert third.is_redelivery(7, True, D) and third.is_redelivery(8, True, E)
    await spool.close()


async def test_a_redelivery_recorded_again_is_erased_by_a_barrier_of_the_live_connection(
    tmp_path: Path,
) -> None:
    spool = await open_spool(tmp_path)
    await commit(spool, await connect(spool), [(7, D)])
    guard = await connect(spool)
    assert guard.is_redelivery(7, True, D)
    await commit(spool, guard, [(7, D)])
    through = guard.begin_barrier()
    assert through is not None
    guard.end_barrier(through)
    await commit(spool, guard, [])
    # The live connection's record is erased; the earlier connection's row (records are one row
    # per commit) stays a candidate until the first new message purges it, as any unmatched one.
    assert await spool.load_unacked() == {7: (1, D)}
    assert not guard.is_redelivery(8, False, E)
    await commit(spool, guard, [(8, E)])
    assert await spool.load_unacked() == {8: (guard.connection, E)}
    await spool.close()
