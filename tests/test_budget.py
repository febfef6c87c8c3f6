from agent.spool.budget import Budget, ChunkInfo, plan_drops

NOW = 10_000.0
GIB = 1024**3


def chunks() -> list[ChunkInfo]:
    return [
        ChunkInfo(1, "raw", NOW - 100, 100),
        ChunkInfo(2, "aggregates", NOW - 90, 100),
        ChunkInfo(3, "raw", NOW - 80, 100),
    ]


def test_within_budget_drops_nothing() -> None:
    plan = plan_drops(Budget(1000, 3600, 0, "drop_oldest"), chunks(), 300, 100, GIB, NOW)
    assert plan.drop == () and plan.blocked_reason is None


def test_drop_oldest_takes_raw_before_aggregates() -> None:
    plan = plan_drops(Budget(350, 3600, 0, "drop_oldest"), chunks(), 300, 200, GIB, NOW)
    assert plan.drop == ((1, "max_size"), (3, "max_size"))
    assert plan.blocked_reason is None


def test_block_policy_blocks_instead() -> None:
    plan = plan_drops(Budget(350, 3600, 0, "block"), chunks(), 300, 200, GIB, NOW)
    assert plan.drop == () and plan.blocked_reason == "max_size"


def test_age_always_drops() -> None:
    plan = plan_drops(Budget(GIB, 95, 0, "block"), chunks(), 300, 10, GIB, NOW)
    assert plan.drop == ((1, "max_age"),)
    assert plan.blocked_reason is None


def test_disk_floor_stops_growth() -> None:
    plan = plan_drops(Budget(GIB, 3600, 500, "drop_oldest"), chunks(), 300, 150, 100, NOW)
    assert plan.drop == ((1, "min_free_disk"), (3, "min_free_disk"))


def test_a_commit_larger_than_the_budget_goes_into_an_emptied_spool() -> None:
    plan = plan_drops(Budget(50, 3600, 0, "drop_oldest"), chunks(), 300, 500, GIB, NOW)
    assert [cid for cid, _ in plan.drop] == [1, 3, 2] and plan.blocked_reason is None
    assert plan_drops(Budget(50, 3600, 0, "block"), [], 0, 500, GIB, NOW).blocked_reason is None


def test_a_disk_below_the_floor_blocks_when_nothing_is_left_to_replace() -> None:
    plan = plan_drops(Budget(GIB, 3600, 500, "drop_oldest"), [], 0, 100, 10, NOW)
    assert plan.blocked_reason == "min_free_disk"


def test_aggregation_state_counts_toward_the_size_budget() -> None:
    budget = Budget(1000, 3600, 0, "drop_oldest")
    assert plan_drops(budget, chunks(), 300, 100, GIB, NOW, state_bytes=600).drop == ()
    plan = plan_drops(budget, chunks(), 300, 100, GIB, NOW, state_bytes=650)
    assert plan.drop == ((1, "max_size"),) and plan.blocked_reason is None
    blocked = plan_drops(Budget(1000, 3600, 0, "block"), chunks(), 300, 100, GIB, NOW, 650)
    assert blocked.blocked_reason == "max_size"


def test_state_that_fills_the_budget_alone_never_blocks_intake_for_good() -> None:
    """The state is never dropped: once the outputs have emptied the spool, a commit is let in."""
    for policy in ("drop_oldest", "block"):
        plan = plan_drops(Budget(500, 3600, 0, policy), [], 0, 100, GIB, NOW, state_bytes=800)
        assert plan.blocked_reason is None
