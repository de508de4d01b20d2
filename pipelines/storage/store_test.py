"""Unit tests of the pure part of history pruning: which landed journeys a batch leaves as landed."""
from __future__ import annotations

from pipelines.storage.store import settled_prefix

DAY = 86_400 * 1_000_000
H = 7 * DAY  # the longest look-back of the journey rules by default (durable / repeat contact)


def j(journey_id: str, status: str, start_day: float, last_day: float, new_day: float) -> tuple[str, str, int, int, int]:
    return (journey_id, status, int(start_day * DAY), int(last_day * DAY), int(new_day * DAY))


def test_journeys_ended_long_before_the_batch_and_the_latest_journey_are_settled():
    journeys = [j("a", "resolved", 0, 1, 60), j("b", "unresolved", 15, 16, 60), j("c", "resolved", 40, 41, 60)]
    # cutoff = min(new 60, latest 41) - 7 = 34: a and b ended before it, c did not
    assert settled_prefix(journeys, H) == ["a", "b"]


def test_the_cutoff_is_strict():
    journeys = [j("a", "resolved", 0, 34, 60), j("c", "resolved", 41, 41, 60)]
    assert settled_prefix(journeys, H) == []  # a ended exactly at the cutoff (41 - 7)
    journeys = [j("a", "resolved", 0, 33.99, 60), j("c", "resolved", 41, 41, 60)]
    assert settled_prefix(journeys, H) == ["a"]


def test_an_open_journey_ends_the_prefix_even_if_later_ones_ended_long_ago():
    journeys = [j("a", "open", 0, 1, 90), j("b", "resolved", 10, 11, 90), j("c", "resolved", 60, 61, 90)]
    assert settled_prefix(journeys, H) == []


def test_a_late_batch_event_settles_nothing_after_it():
    journeys = [j("a", "resolved", 0, 1, 5), j("b", "resolved", 20, 21, 5)]
    assert settled_prefix(journeys, H) == []


def test_the_latest_landed_event_bounds_the_cutoff_too():
    # durability of a is undecided while the customer's latest event is within 7 days of it
    journeys = [j("a", "resolved", 0, 1, 100)]
    assert settled_prefix(journeys, H) == []
    journeys = [j("a", "resolved", 0, 1, 100), j("b", "resolved", 9, 9, 100)]
    assert settled_prefix(journeys, H) == ["a"]


def test_a_settled_journey_reaching_past_the_next_start_is_given_up_with_everything_after_it():
    # a was reopened after b and c started; c is still open: a and b both reach past c's start? a does
    journeys = [j("a", "resolved", 0, 35, 90), j("b", "resolved", 20, 21, 90), j("c", "open", 30, 80, 90)]
    assert settled_prefix(journeys, H) == []
    # the same, but a's last event precedes c's start: a and b settle
    journeys = [j("a", "resolved", 0, 29, 90), j("b", "resolved", 20, 21, 90), j("c", "open", 30, 80, 90)]
    assert settled_prefix(journeys, H) == ["a", "b"]
    # only the first journey reaches past the second's start: the walk back stops at zero
    journeys = [j("a", "resolved", 0, 25, 90), j("b", "open", 20, 85, 90)]
    assert settled_prefix(journeys, H) == []


def test_every_journey_can_settle_when_the_batch_starts_a_new_one_far_later():
    journeys = [j("a", "resolved", 0, 1, 200), j("b", "resolved", 50, 51, 200), j("c", "unresolved", 100, 101, 200)]
    # cutoff = min(200, 101) - 7 = 94: c (last 101) stays, a and b settle
    assert settled_prefix(journeys, H) == ["a", "b"]
    assert settled_prefix([], H) == []
