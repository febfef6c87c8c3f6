from agent.source.redelivery import RedeliveryGuard, digest

D = digest("t/a", b"1.5")


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
    assert guard.take_settled() == ([], 2)
    assert guard.take_settled() == ([], None)


def test_records_settle_only_when_a_barrier_returns() -> None:
    guard = RedeliveryGuard()
    guard.start_connection(1, {})
    records = [(m, 1, digest("t", str(m).encode())) for m in range(1, 4)]
    guard.remember(records)
    pending = guard.begin_barrier()
    guard.remember([(4, 1, digest("t", b"4"))])
    assert guard.take_settled() == ([], None)
    guard.end_barrier(pending)
    settled, purge = guard.take_settled()
    assert purge is None and len(settled) == 1
    mids, digests = settled[0]
    assert mids.tolist() == [1, 2, 3] and digests == b"".join(d for _, _, d in records)
    assert guard.begin_barrier()[0].tolist() == [4]


def test_unsettled_records_survive_a_failed_barrier() -> None:
    guard = RedeliveryGuard()
    guard.start_connection(1, {})
    guard.remember([(1, 1, D)])
    first = guard.begin_barrier()
    guard.remember([(2, 1, D)])
    guard.barrier_failed(first)
    mids, digests = guard.begin_barrier()
    assert mids.tolist() == [1, 2] and digests == D + D


def test_digest_separates_topic_and_payload() -> None:
    assert digest("a/b", b"c") != digest("a/", b"bc")
