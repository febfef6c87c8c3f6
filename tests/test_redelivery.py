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
