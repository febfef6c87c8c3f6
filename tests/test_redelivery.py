from agent.source.redelivery import RedeliveryGuard, digest


def test_redelivery_after_reconnect_is_recognised() -> None:
    guard = RedeliveryGuard({})
    guard.start_connection(1)
    d = digest("t/a", b"1.5")
    guard.remember([(7, 1, d)])
    guard.start_connection(2)
    assert guard.is_redelivery(7, True, d)


def test_same_connection_is_never_a_redelivery() -> None:
    guard = RedeliveryGuard({})
    guard.start_connection(1)
    d = digest("t/a", b"1.5")
    guard.remember([(7, 1, d)])
    assert not guard.is_redelivery(7, True, d)


def test_without_dup_or_with_other_content_it_is_new() -> None:
    guard = RedeliveryGuard({7: (1, digest("t/a", b"1.5"))})
    guard.start_connection(2)
    assert not guard.is_redelivery(7, False, digest("t/a", b"1.5"))
    assert not guard.is_redelivery(7, True, digest("t/a", b"1.6"))
    assert not guard.is_redelivery(7, True, digest("t/b", b"1.5"))
    assert not guard.is_redelivery(8, True, digest("t/a", b"1.5"))


def test_acknowledged_records_are_forgotten_and_erased_by_next_commit() -> None:
    guard = RedeliveryGuard({})
    guard.start_connection(1)
    d = digest("t/a", b"1")
    guard.remember([(7, 1, d)])
    guard.acked(7)
    guard.start_connection(2)
    assert not guard.is_redelivery(7, True, d)
    assert guard.take_acked() == [7]
    assert guard.take_acked() == []


def test_digest_separates_topic_and_payload() -> None:
    assert digest("a/b", b"c") != digest("a/", b"bc")
