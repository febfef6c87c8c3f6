from agent.source.redelivery import RedeliveryGuard, digest

D = digest("t/a", b"1.5")


def guard_after_crash(records: dict[int, tuple[int, bytes]], window: int = 10) -> RedeliveryGuard:
    guard = RedeliveryGuard(records, window)
    guard.start_connection(2)
    return guard


def test_redelivery_after_reconnect_is_recognised() -> None:
    guard = guard_after_crash({7: (1, D)})
    assert guard.is_redelivery(7, True, D)


def test_same_connection_is_never_a_redelivery() -> None:
    guard = RedeliveryGuard({}, 10)
    guard.start_connection(1)
    guard.remember([(7, 1, D)])
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
    assert guard.take_settled() == ([], 2)
    assert guard.take_settled() == ([], None)


def test_records_settle_after_a_window_of_newer_messages() -> None:
    guard = RedeliveryGuard({}, window=3)
    guard.start_connection(1)
    guard.remember([(m, 1, digest("t", str(m).encode())) for m in range(1, 6)])
    assert guard.take_settled() == ([1, 2], None)
    guard.start_connection(2)
    assert not guard.is_redelivery(1, True, digest("t", b"1"))


def test_digest_separates_topic_and_payload() -> None:
    assert digest("a/b", b"c") != digest("a/", b"bc")
