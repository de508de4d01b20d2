"""Offset planning: fair shares under a cap, and safe resumption when the broker's log changed."""
from pipelines.kafka.read import OffsetRange
from pipelines.local.planner import is_valid_plan, plan_ranges, start_offsets


def test_caps_total_and_gives_small_partitions_all_they_need():
    ranges = plan_ranges({("a", 0): 0, ("a", 1): 10, ("b", 0): 5}, {("a", 0): 100, ("a", 1): 12, ("b", 0): 1000}, 50)
    sizes = {(r.topic, r.partition): r.size for r in ranges}
    assert sum(sizes.values()) == 50
    assert sizes[("a", 1)] == 2
    assert all(r.start == s for r, s in zip(ranges, [0, 10, 5]))


def test_nothing_to_do_when_caught_up():
    assert plan_ranges({("a", 0): 7}, {("a", 0): 7}, 100) == []


def test_resume_positions_and_warnings():
    parts = [("a", 0), ("a", 1), ("a", 2)]
    starts, warnings = start_offsets(parts, {("a", 0): 5, ("a", 1): 1, ("a", 2): 50}, {("a", 0): 0, ("a", 1): 3, ("a", 2): 0},
                                     {("a", 0): 9, ("a", 1): 9, ("a", 2): 10})
    assert starts == {("a", 0): 5, ("a", 1): 3, ("a", 2): 0}
    assert len(warnings) == 2


def test_whole_budget_is_used():
    starts = {("a", 0): 0, ("a", 1): 0, ("a", 2): 0}
    ranges = plan_ranges(starts, {k: 100 for k in starts}, 10)
    assert sum(r.size for r in ranges) == 10


def test_a_plan_made_earlier_is_valid_only_from_where_each_partition_resumes_now():
    starts, targets = {("a", 0): 10, ("a", 1): 5}, {("a", 0): 20, ("a", 1): 5}
    assert is_valid_plan([OffsetRange("a", 0, 10, 20)], starts, targets)
    assert is_valid_plan(plan_ranges(starts, targets, 4), starts, targets)
    # the batch before it did not land (it failed, or stopped early): it would skip offsets 10..11
    assert not is_valid_plan([OffsetRange("a", 0, 12, 20)], starts, targets)
    assert not is_valid_plan([OffsetRange("a", 0, 8, 20)], starts, targets)  # or read 8..9 twice
    assert not is_valid_plan([OffsetRange("a", 0, 10, 21)], starts, targets)  # past the target
    assert not is_valid_plan([OffsetRange("a", 0, 10, 10)], starts, targets)  # reads nothing
    assert not is_valid_plan([OffsetRange("b", 0, 0, 1)], starts, targets)  # a partition no longer there
    assert not is_valid_plan([OffsetRange("a", 0, 10, 12), OffsetRange("a", 0, 10, 12)], starts, targets)
    assert not is_valid_plan([], starts, targets)
